"""The topics of the seed material that have no experiment yet: the catalog's "not yet tested" tips.

Every topic of the tips README (``002``), the lecture (``003``, with its object-detection appendix) and the
MambaOut blog (``004``) that no experiment of :mod:`dltricks.experiments` tests is listed here as a
:class:`~dltricks.evidence.Tip` without an experiment: the claim in our words and in the source's direction,
the passage it comes from, and what an experiment would need (``pending``). ``dltricks tips`` counts them
apart from the implemented experiments and the documentation checks.

Left out on purpose, because they make no claim about deep learning that code could test: the lecture's
history anecdotes (003:458-479), the ADE20K statistics (003:1675-1687), the choice of toolkit
(003:1841-1868), the steps of a PyTorch program (003:1872-1885) and its debugging links (003:1904-1909).

A planned tip's verdict rule is written together with its experiment (:data:`UNDECIDED` until then).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dltricks.evidence import BLOG, DILATED, LECTURE, README, Cite, RuleError, Tip

__all__ = ["PLANNED", "UNDECIDED", "Undecided", "planned"]


@dataclass(frozen=True)
class Undecided:
    """The rule of a tip that has no experiment yet: it is fixed when the experiment is written."""

    def decide(self, evidence: Any, mode: str) -> Any:
        raise RuleError("a tip without an experiment has nothing to decide")

    def describe(self) -> str:
        return "none yet: the rule is fixed when the experiment is written"

    def brief(self) -> str:
        return "none yet"


UNDECIDED = Undecided()


def planned(id: str, title: str, claim: str, section: str, cite: tuple[Cite, ...] | Cite,  # noqa: A002
            pending: str, source: str = "") -> Tip:
    """A tip of the catalog without an experiment (listed as "not yet tested")."""
    return Tip(id=id, title=title, claim=claim, source=source, section=section, rule=UNDECIDED, cite=cite,
               pending=pending)


CONV, SEG, DET, NORM, REG = ("Convolutions", "Dense prediction", "Object detection", "Normalisation and optimisation",
                             "Regularisation")
ARCH, SSM, LEARN, SCALE = "Architectures", "State-space models", "Learning setups", "Search, compression and scale"

PLANNED: tuple[Tip, ...] = (
    # ------------------------------------------------------------------------------------------ convolutions
    planned("conv.depth-for-receptive-field", "Depth set by the receptive field needed",
            "The number of layers should follow from the receptive field the task needs: a network too shallow "
            "for its field to cover the structures it must recognise is less accurate than one whose field does.",
            CONV, README.at(34, 36, "receptive field and layer depth"),
            "a task whose objects have a known size and a sweep of depths at a fixed budget"),
    planned("conv.inception-branches", "Parallel filter sizes (Inception)",
            "Filters of several sizes side by side in one layer handle objects at different scales, and 1x1 "
            "convolutions in front of the large ones keep the cost down (GoogLeNet).",
            CONV, LECTURE.at(553, 559, "GoogLeNet: several filter sizes, 1x1 reduction"),
            "an Inception block and a data set with objects at several scales"),
    planned("conv.xception", "Depthwise-separable Inception (Xception)",
            "Replacing Inception's convolutions with depthwise-separable ones gives a smaller and faster model that "
            "is about as accurate as Inception v3.",
            CONV, LECTURE.at(909, 919, "Xception"),
            "an Inception-style and an Xception-style network trained and timed side by side"),
    planned("conv.inverted-bottleneck-memory", "Inverted bottleneck saves inference memory",
            "With residual connections, an inverted bottleneck (expand with 1x1, depthwise 3x3, project with 1x1) "
            "needs less run-time memory at inference than a bottleneck, because only thin tensors cross blocks.",
            CONV, LECTURE.at(931, 943, "inverted bottleneck"),
            "MobileNetV2-style blocks and a peak-memory comparison at inference (dltricks.measure.peak_memory)"),
    planned("conv.fused-mbconv", "MBConv, SE and Fused-MBConv",
            "The mobile inverted bottleneck uses a depthwise convolution (MobileNetV2), adds squeeze-and-excitation "
            "(EfficientNet) and can fuse the 1x1 expansion with the depthwise 3x3 into one 3x3 convolution "
            "(EfficientNetV2), which runs faster on accelerators.",
            CONV, LECTURE.at(947, 957, "mobile inverted bottleneck"),
            "MBConv and Fused-MBConv blocks and a latency comparison on a GPU"),
    planned("conv.cbam", "Spatial attention on top of SE (CBAM)",
            "CBAM weights spatial positions as well as the channels that squeeze-and-excitation weights, and so "
            "improves on it.",
            CONV, LECTURE.at(1103, 1104, "CBAM extends SE to space"),
            "a CBAM layer (dltricks.layers) and the SE experiment's setting with a third arm"),
    planned("conv.large-kernels", "A few very large depthwise kernels",
            "Recent CNNs borrow from ViTs and use very large depthwise kernels (up to 31x31) to build a large "
            "receptive field in few layers, against the many-small-kernels rule.",
            CONV, LECTURE.at(1403, 1411, "after 2022: large depthwise kernels"),
            "an effective-receptive-field and accuracy comparison of a 31x31 depthwise stack and a 3x3 stack"),
    planned("conv.deformable", "Deformable convolution",
            "Convolutions whose sampling positions are learned offsets (deformable convolution) are back in recent "
            "CNNs because they adapt the kernel's shape to the object.",
            CONV, (LECTURE.at(1407, topic="the return of deformable convolution"),
                   LECTURE.at(1775, 1777, "deformable convolution")),
            "a deformable convolution layer (torchvision.ops.deform_conv2d) and a task with geometric deformation"),
    # ------------------------------------------------------------------------------------------ dense prediction
    planned("seg.aspp-multiscale", "ASPP captures several scales",
            "The parallel atrous rates of ASPP gather context at several scales, which helps segment objects of "
            "different sizes.",
            SEG, DILATED.at(1, topic="its lines 33-34: ASPP for multi-scale context"),
            "DeepLabV3 with and without ASPP (one rate) trained on data with objects at several sizes"),
    planned("seg.deeplabv3plus-decoder", "DeepLabv3+ decoder sharpens boundaries",
            "Adding an encoder-decoder path to DeepLabV3's pyramid pooling (DeepLabv3+) recovers sharper object "
            "boundaries.",
            SEG, LECTURE.at(1665, 1673, "DeepLab v3+"),
            "a DeepLabv3+ decoder and the boundary F1 of seg.pooling-invariance with and without it"),
    planned("seg.unet-vs-deeplab", "DeepLab's masks are rougher than U-Net's",
            "DeepLab targets natural images and its predictions are rougher than U-Net's, whose skip connections "
            "keep the resolution.",
            SEG, (LECTURE.at(1667, 1668, "DeepLab: natural images, rougher predictions"),
                  LECTURE.at(1614, 1617, "U-Net keeps resolution")),
            "U-Net and DeepLabV3 trained at equal budget on ISBI, boundary F1 compared (both models exist)"),
    planned("seg.max-unpooling", "Unpooling with the pooling mask",
            "Unpooling can put each value back where the max-pooling took its maximum (the pooling mask), the "
            "alternative to resizing the map.",
            SEG, (LECTURE.at(1633, 1635, "two ways to upsample"), LECTURE.at(1817, 1839, "pooling mask, unpooling")),
            "an exact check of nn.MaxUnpool2d against the lecture's worked 4x4 example"),
    # ------------------------------------------------------------------------------------------ object detection
    planned("det.region-proposals", "Region proposals (R-CNN)",
            "Classifying only the regions a heuristic proposes (selective search) looks at far fewer windows than "
            "a sliding window, but one CNN pass per proposal is still slow.",
            DET, LECTURE.at(1950, 1963, "R-CNN, selective search"), "a detection data set and proposal code"),
    planned("det.roi-pooling", "One CNN pass and RoI pooling (Fast R-CNN)",
            "Running the CNN once on the whole image and pooling each region to a fixed-size map (RoI pooling) is "
            "much faster than one CNN pass per proposal.",
            DET, LECTURE.at(1965, 1974, "Fast R-CNN"), "a timing of per-proposal CNN passes vs RoI pooling"),
    planned("det.anchors-rpn", "Learned proposals on anchors (Faster R-CNN)",
            "A region proposal network on anchor boxes learns the proposals, so no hand-made heuristic is needed.",
            DET, LECTURE.at(1976, 1981, "Faster R-CNN"), "a region proposal network and a detection data set"),
    planned("det.yolov2-tricks", "YOLOv2's bag of tricks",
            "Each of YOLOv2's additions (batch norm, high-resolution classifier, anchors, dimension priors, "
            "multi-scale training, ...) raised VOC2007 mAP, from 63.4 to 78.6 in total.",
            DET, LECTURE.at(2005, 2020, "YOLOv2 ablation table"), "a YOLO-style detector and a detection data set"),
    planned("det.centernet", "Objects as points (CenterNet)",
            "A detector can predict object centres as a keypoint heat-map plus an offset and a size per centre.",
            DET, LECTURE.at(2056, 2068, "CenterNet"), "a CenterNet-style head and a detection data set"),
    planned("det.detr", "Set prediction (DETR)",
            "A Transformer can predict the set of boxes directly (DETR), without anchors or non-maximum "
            "suppression.",
            DET, LECTURE.at(2070, 2072, "DETR"), "a DETR-style model and a detection data set"),
    # ------------------------------------------------------------------------------------------ normalisation, optim
    planned("norm.layer-norm-sequences", "Layer norm for sequences",
            "For sequences of varying length processed token by token, layer norm fits better than batch norm, "
            "which is why NLP uses it; instance and layer norm suit other settings than batch norm.",
            NORM, (LECTURE.at(1208, 1213, "layer norm vs batch norm in NLP"),
                   LECTURE.at(626, 630, "which norm where"), README.at(83, 86, "normalization techniques")),
            "a Transformer on variable-length sequences trained with layer norm vs batch norm"),
    planned("norm.batchnorm-eval-statistics", "Batch norm at evaluation",
            "In evaluation mode batch norm normalises with the running mean and variance kept during training; "
            "without running statistics it uses the statistics of the evaluation batch.",
            NORM, LECTURE.at(632, 650, "batch norm in training and inference"),
            "an exact check of nn.BatchNorm2d's train and eval outputs against the formula"),
    planned("optim.initialization", "Initialisation matters for deep nets",
            "A deep plain network trains with a variance-preserving initialiser (He, Glorot) and stalls with a "
            "naive one; VGG needed care here before these existed.",
            NORM, LECTURE.at(503, topic="VGG: initialization is very important"),
            "a deep plain CNN trained from a naive and from a He initialisation"),
    planned("optim.auxiliary-losses", "Auxiliary losses feed gradient to early layers",
            "Extra losses on intermediate layers (GoogLeNet's side classifiers, gradient injection) bring "
            "gradient to the lower layers of a deep network.",
            NORM, (LECTURE.at(543, 545, "gradient injection"),
                   LECTURE.at(561, topic="GoogLeNet: extra softmax losses")),
            "a deep network with and without auxiliary heads, the gradient norm of its first layers compared"),
    # ------------------------------------------------------------------------------------------ regularisation
    planned("reg.batchnorm-regularizes", "Batch norm as a regulariser",
            "The batch statistics change from batch to batch, a noise that regularises: batch norm lowers "
            "overfitting and replaces dropout in some networks.",
            REG, (LECTURE.at(587, topic="batch norm: implicit regularization"),
                  LECTURE.at(597, 605, "replaces dropout; batch noise"),
                  README.at(121, topic="batch norm against overfitting")),
            "the dropout tip's small-data setting with a batch-norm arm"),
    # ------------------------------------------------------------------------------------------ architectures
    planned("arch.start-simple", "Start simple, overfit, then regularise",
            "Pick the architecture family from the data (CNNs for images, recurrent nets or Transformers for "
            "sequences), start with a simple model, make it overfit, then add regularisation.",
            ARCH, (README.at(4, 7, "architecture design and basics"),
                   LECTURE.at(1689, 1699, "choosing an architecture")),
            "advice about a workflow; an experiment would compare tuning paths at a fixed compute budget"),
    planned("arch.seq2seq-attention", "Attention in sequence-to-sequence models",
            "A decoder that attends over all encoder states does better than one that gets a single fixed-length "
            "vector, which limits recurrent models on long inputs.",
            ARCH, (LECTURE.at(62, 65, "drawbacks of RNNs"), LECTURE.at(85, 91, "why attention")),
            "the dates experiment exists (dltricks.experiments.attention.attention_experiment); it is not yet "
            "declared as a tip with seeds and a rule"),
    planned("arch.scaled-dot-product", "Scaling dot-product attention by 1/sqrt(d)",
            "Dot products of high-dimensional vectors have a large variance, so the softmax saturates and the "
            "gradient shrinks; dividing by sqrt(d) avoids it. Additive attention does better than unscaled "
            "multiplicative attention at large dimensions, which is faster.",
            ARCH, LECTURE.at(263, 276, "multiplicative attention and its scaling"),
            "a measurement of softmax saturation and gradient size with and without the scale"),
    planned("arch.positional-encoding", "Positional encodings give attention order",
            "Self-attention has no notion of order; without positional encodings a Transformer cannot solve a task "
            "that depends on positions (the lecture's 'third element' example).",
            ARCH, (LECTURE.at(385, topic="attention lacks the concept of order"),
                   LECTURE.at(1126, 1136, "sinusoidal positional encoding"),
                   README.at(179, 180, "positional encoding")),
            "an order-dependent task learned with and without positional encodings"),
    planned("arch.multi-head", "Several attention heads",
            "Several heads attend to different relations in parallel, which one head of the same width cannot.",
            ARCH, (LECTURE.at(1141, 1163, "multi-head attention"), README.at(177, 178, "multi-head attention")),
            "a task with two relations to track, one head vs several heads at equal width"),
    planned("arch.hybrid-cnn-transformer", "Hybrids of convolutions and attention",
            "In vision, combining convolutions (local features) with Transformer layers (global context) works "
            "well.",
            ARCH, README.at(190, 191, "hybrid architectures"),
            "a hybrid (convolutional stem + ViT, dltricks.layers.patch_embed) added to arch.cnn-vs-vit-small-data"),
    planned("arch.vit-needs-large-data", "ViT wins only with very large pre-training",
            "Pre-trained on little data, ViT does worse than ResNets; it overtakes them only with very large "
            "pre-training sets.",
            ARCH, (LECTURE.at(1335, 1342, "ViT vs ResNets by pre-training size"),
                   README.at(181, 182, "Transformers pre-trained on massive data")),
            "pre-training at several data-set sizes, more compute than a CPU run allows"),
    planned("arch.vit-dense-backbone", "Plain ViT is a weak dense-prediction backbone",
            "A plain ViT is a poor backbone for detection and segmentation; a hierarchical one such as Swin does "
            "better.",
            ARCH, (LECTURE.at(1344, 1354, "ViT as a detection backbone"), LECTURE.at(1380, 1388, "Swin as a backbone")),
            "ViT and Swin encoders in the segmentation models, trained on ISBI"),
    planned("arch.swin-windows", "Shifted local windows (Swin)",
            "Attention inside local windows, shifted from layer to layer, gives a hierarchical Transformer with "
            "shared weights (translation equivariance) and a cost linear in the image size.",
            ARCH, LECTURE.at(1358, 1392, "Swin Transformer"),
            "Swin exists (dltricks.models.swin); needs a cost-vs-size and an equivariance measurement"),
    planned("arch.mlp-mixer", "MLP-Mixer without attention",
            "Mixing tokens and channels with MLPs only, without attention, gives a competitive vision model.",
            ARCH, LECTURE.at(1482, 1492, "MLP-Mixer"),
            "MLP-Mixer exists (dltricks.models.mlp_mixer); needs a matched comparison with ViT"),
    planned("arch.densenet", "Dense connections (DenseNet)",
            "Concatenating the feature maps of all earlier layers (DenseNet) gives a smaller model, with fewer "
            "channels per layer, for the accuracy.",
            ARCH, LECTURE.at(1009, 1018, "DenseNet"),
            "a DenseNet and a ResNet matched in accuracy, parameters compared"),
    planned("arch.pre-activation", "Pre-activation residual units (ResNet v2)",
            "With pre-activation units and clean identity shortcuts, ResNets keep improving beyond 200 layers, "
            "though with diminishing returns.",
            ARCH, LECTURE.at(984, 1006, "ResNet v2"),
            "very deep residual networks, more compute than a CPU run allows"),
    planned("arch.compound-scaling", "Compound scaling (EfficientNet)",
            "Scaling width, depth and resolution together gives a better accuracy-cost trade-off than scaling one "
            "of them.",
            ARCH, LECTURE.at(1068, 1076, "EfficientNet scaling"), "a family of CNNs scaled three ways at equal FLOPs"),
    planned("arch.standard-cnn-design", "The standard CNN after ResNet",
            "After ResNet, CNNs share one design: a large stem that downsamples fast, small 3x3 and 1x1 filters, "
            "five stages down to stride 32, global average pooling and conv-BN-ReLU blocks.",
            ARCH, LECTURE.at(652, 661, "standardized architecture"),
            "an ablation of the design's parts (stem, pooling head) on one task"),
    # ------------------------------------------------------------------------------------------ state-space models
    planned("ssm.linear-time", "Mamba's cost grows linearly with length",
            "An SSM layer's time grows linearly with the sequence length, attention's quadratically, so Mamba "
            "suits long sequences.",
            SSM, (README.at(242, topic="Mamba: linear or sub-quadratic"),
                  BLOG.at(64, 66, "attention vs RNN-like cost")),
            "the timing experiment exists (dltricks.experiments.ssm.scaling); it is not yet declared as a tip"),
    planned("ssm.s4-memory", "Structured A lets an SSM remember",
            "Constraining the state matrix A (S4's structured initialisation) lets a linear state-space model "
            "remember the distant past.",
            SSM, LECTURE.at(1496, 1501, "S4: constraining A"),
            "an S4 with a structured vs a random A on a memory task"),
    planned("ssm.constant-memory-inference", "Mamba for resource-limited inference",
            "Mamba needs little memory and suits devices with few resources: its recurrent inference keeps a "
            "fixed-size state, where attention's cache grows with the sequence.",
            SSM, (README.at(206, 207, "memory efficiency"), README.at(275, 278, "Mamba excels at limited resources"),
                  BLOG.at(66, topic="a fixed-size hidden state")),
            "a memory measurement of step-by-step inference, Mamba vs attention with a key-value cache"),
    # ------------------------------------------------------------------------------------------ learning setups
    # ------------------------------------------------------------------------------------------ search, scale
    planned("scale.long-inputs", "Handling long inputs in Transformers",
            "For long inputs, truncation, chunking or hierarchical attention keep a Transformer affordable, and "
            "FlashAttention or mixed precision cut its GPU memory.",
            SCALE, (README.at(188, 189, "manage sequence length"), README.at(236, 237, "quadratic cost, mitigations")),
            "a GPU memory measurement of memory-efficient vs plain attention against sequence length"),
    planned("scale.model-parallelism", "Model parallelism for large models",
            "Large models are trained with tensor cores and model parallelism (pipeline or tensor sharding).",
            SCALE, README.at(196, 197, "hardware optimization"), "several GPUs"),
)
