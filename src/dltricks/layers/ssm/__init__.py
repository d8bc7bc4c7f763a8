"""State-space sequence layers: S4D, Mamba's selective scan (S6), the Mamba block and the Gated CNN
block of MambaOut.

* :mod:`.selective_scan` - the S6 scan: sequential reference, fast chunked CPU scan with a recomputing
  backward, Blelloch parallel scan, one-step update, optional ``mamba_ssm`` CUDA kernel.
* :mod:`.s4d` - the diagonal LTI state-space layer S4D (convolution and recurrent modes).
* :mod:`.mamba` - the Mamba mixer (with an inference cache), its pre-norm residual wrapper and the
  bidirectional mixer of Vision Mamba.
* :mod:`.gated_cnn` - MambaOut's Gated CNN block (2-D) and its causal 1-D form.
"""

from dltricks.layers.ssm.gated_cnn import GatedCNN1d, GatedCNNBlock
from dltricks.layers.ssm.mamba import BiMamba, Mamba, MambaBlock, MambaState, dt_rank_for, get_seq_norm
from dltricks.layers.ssm.s4d import S4D, S4D_INITS, S4DKernel, S4DMixer, s4d_init_A
from dltricks.layers.ssm.selective_scan import (SCAN_IMPLEMENTATIONS, blelloch_scan, cuda_selective_scan_available,
                                                selective_scan, selective_scan_blelloch, selective_scan_chunked,
                                                selective_scan_ref, selective_state_update)

__all__ = ["GatedCNN1d", "GatedCNNBlock", "BiMamba", "Mamba", "MambaBlock", "MambaState", "dt_rank_for",
           "get_seq_norm", "S4D", "S4DMixer", "S4D_INITS", "S4DKernel", "s4d_init_A", "SCAN_IMPLEMENTATIONS",
           "blelloch_scan", "cuda_selective_scan_available", "selective_scan", "selective_scan_blelloch",
           "selective_scan_chunked", "selective_scan_ref", "selective_state_update"]
