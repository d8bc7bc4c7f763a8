"""Measurements: parameters, FLOPs/MACs, latency, memory, per-layer table, receptive field, calibration.

Built on PyTorch's own tools: :class:`torch.utils.flop_counter.FlopCounterMode` for FLOPs,
:mod:`torch.utils.benchmark` for timings, the CUDA allocator statistics or :mod:`torch.profiler`
memory events for peak memory, and a dispatch mode for receptive fields. Each module's docstring
states its method and its limits; ``docs/measure.md`` has examples.

* :func:`count_params`, :func:`params_by_module` (:mod:`.params`)
* :func:`count_flops`, :func:`count_macs` (:mod:`.flops`)
* :func:`time_function`, :func:`measure_latency`, :func:`measure_speed` (:mod:`.latency`)
* :func:`peak_memory` (:mod:`.memory`)
* :func:`layer_table` (:mod:`.layer_table`)
* :func:`trace_receptive_fields`, :func:`receptive_field`, :func:`theoretical_receptive_field`,
  :func:`gradient_support`, :func:`effective_receptive_field` (:mod:`.receptive_field`)
* :func:`expected_calibration_error`, :func:`calibration_report`, :func:`plot_reliability_diagram`
  (:mod:`.calibration`)
* :func:`profile_model` (:mod:`.profile`), :func:`compare_models` (:mod:`.leaderboard`)
"""

from dltricks.measure.calibration import (brier_score, calibration_bins, calibration_report, collect_logits,
                                          expected_calibration_error, maximum_calibration_error,
                                          negative_log_likelihood, plot_reliability_diagram)
from dltricks.measure.flops import FlopCount, count_flops, count_macs
from dltricks.measure.latency import SpeedResult, Timing, measure_latency, measure_speed, time_function
from dltricks.measure.layer_table import LayerRow, layer_table
from dltricks.measure.memory import MemoryStats, peak_memory
from dltricks.measure.params import ParamCount, count_params, format_count, params_by_module
from dltricks.measure.profile import ProfileReport, profile_model
from dltricks.measure.receptive_field import (ReceptiveField, RFTrace, TheoreticalRF, UntraceableError,
                                              conv_stack, effective_receptive_field, erf_growth, gradient_support,
                                              plot_erf, plot_erf_growth, receptive_field, support_box,
                                              theoretical_receptive_field, trace_receptive_fields)

__all__ = [
    "count_params", "params_by_module", "format_count", "ParamCount",
    "count_flops", "count_macs", "FlopCount",
    "time_function", "measure_latency", "measure_speed", "Timing", "SpeedResult",
    "peak_memory", "MemoryStats",
    "layer_table", "LayerRow",
    "trace_receptive_fields", "receptive_field", "theoretical_receptive_field", "gradient_support", "support_box",
    "effective_receptive_field", "erf_growth", "conv_stack", "plot_erf", "plot_erf_growth", "ReceptiveField",
    "RFTrace", "TheoreticalRF", "UntraceableError",
    "expected_calibration_error", "maximum_calibration_error", "negative_log_likelihood", "brier_score",
    "calibration_bins", "calibration_report", "plot_reliability_diagram", "collect_logits",
    "profile_model", "ProfileReport",
]
