"""The catalog: every tip from the seed material (the lecture, the README, the papers it cites).

Each entry fixes, before anything runs, the claim, the code exercised, the quick and full settings
and the verdict rule. A tip whose experiment or machinery does not exist yet is listed as "not
implemented yet" with what is missing; nothing here is a stored result.

Budgets: ``make run`` (quick mode, every tip) must finish within 5 minutes on 2 cores, so quick
settings use tiny models, a few thousand MNIST images and 1-2 epochs, or 120-300 optimiser steps on
short sequences and small crops (``budget_s`` is the planned seconds on one core; the report shows the
measured time next to it). Every implemented tip has a quick setting; where the full experiment needs
data or compute that quick mode cannot afford (CIFAR-10 for H1), the quick setting runs the same
experiment code scaled down and the claim says what it runs.
"""

from __future__ import annotations

from dltricks.tips.core import Tip
from dltricks.tips.rules import AllOf, Effect, Exact, NonInferior

__all__ = ["CATALOG", "get_catalog", "SECTIONS"]

CONV, SEG, NORM, REG, ARCH, SSM = ("Convolutions", "Dense prediction", "Normalisation and optimisation", "Regularisation",
                                   "Architectures", "State-space models")
SECTIONS = (CONV, SEG, NORM, REG, ARCH, SSM)
LECTURE, README = "the lecture", "the README"
X = "dltricks.tips.experiments"
TRAIN_REQ = ("dltricks.train.trainer:fit", "dltricks.tasks.classification", "dltricks.measure.calibration:expected_calibration_error")
TRAIN_EXERCISES = ("dltricks.train", "dltricks.data.loader", "dltricks.data.augment")


# H1 and CNN-vs-ViT in quick mode: the same recipe and model families, scaled down, on the MNIST split shipped in
# the package (CIFAR-10 is neither embedded nor fast enough for a quick run).
H1_QUICK = {"data": "mnist-embedded", "epochs": 2, "batch_size": 64, "subset": 2000, "val_subset": 1000}


def _train_tip(**kw) -> Tip:
    """A tip trained on the embedded MNIST split with :func:`dltricks.train.fit`."""
    kw.setdefault("requires", TRAIN_REQ)
    kw["exercises"] = tuple(kw.get("exercises", ())) + TRAIN_EXERCISES
    return Tip(**kw)


CATALOG: list[Tip] = [
    # ---------------------------------------------------------------------------------------------- convolutions
    Tip(id="conv.stacked-3x3", title="Stacked 3x3 = one large kernel",
        claim="Two stacked 3x3 convolutions see the same 5x5 receptive field as one 5x5 convolution, and three see "
              "7x7, with fewer weights and MACs.",
        source=f"{LECTURE} (VGG); Simonyan & Zisserman 2015, Sec. 2.3", section=CONV,
        experiment=f"{X}.conv:stacked_small_kernels", exercises=("torch.nn.modules.conv", "dltricks.measure.receptive_field"),
        quick={"channels": 64, "size": 32, "depths": [2, 3]}, full={"channels": 64, "size": 32, "depths": [2, 3, 4]},
        seeds={"quick": 1, "full": 1}, budget_s=1,
        metrics={"rf": "receptive field (px) from the input-gradient support", "weights": "conv weights", "MACs": "multiply-accumulates"},
        rule=Exact(checks=("same receptive field (2 stacked vs 5x5)", "fewer weights (2 stacked vs 5x5)",
                           "same receptive field (3 stacked vs 7x7)", "fewer weights (3 stacked vs 7x7)",
                           "fewer MACs (2 stacked vs 5x5)", "fewer MACs (3 stacked vs 7x7)"))),
    _train_tip(id="conv.small-vs-large-kernels", title="Small vs large kernels",
               claim="At the same receptive field, a CNN of stacked 3x3 convolutions has fewer weights and MACs than "
                     "one of 5x5 convolutions and is at least as accurate.",
               source=f"{README} (small vs large kernels); {LECTURE} (VGG)", section=CONV,
               experiment=f"{X}.training:kernel_size",
               quick={"subset": 2000, "epochs": 1, "width": 8}, full={"subset": 8000, "epochs": 3, "width": 16},
               budget_s=12, metrics={"val_acc": "validation accuracy", "weights": "conv weights"},
               rule=AllOf((Exact(checks=("3x3 net has fewer weights", "3x3 net has fewer MACs")),
                           NonInferior("val_acc", "3x3 stacks", "5x5 kernels", margin=0.01)))),
    Tip(id="conv.padding", title="Padding keeps size and borders",
        claim="'Same' zero padding keeps the feature-map size through a conv stack and lets border pixels reach "
              "more output units; without it every 3x3 layer trims 2 pixels and the borders fade out.",
        source=f"{README} (padding)", section=CONV, experiment=f"{X}.conv:padding_border",
        exercises=("torch.nn.modules.conv",), quick={"depth": 5, "size": 28}, full={"depth": 5, "size": 28},
        seeds={"quick": 1, "full": 1}, budget_s=1,
        rule=Exact(checks=("padding keeps the spatial size", "no padding shrinks the map by 10 px",
                           "the corner pixel reaches more output units with padding",
                           "the corner pixel's share of the output gradient is larger with padding"))),
    Tip(id="conv.striding-pooling", title="Striding/pooling: bigger RF, less compute, less detail",
        claim="Striding or pooling enlarges the receptive field of a conv stack and cuts its compute, but the output "
              "loses spatial resolution.",
        source=f"{README} (striding and pooling)", section=CONV, experiment=f"{X}.conv:downsampling_vs_dilation",
        exercises=("torch.nn.modules.conv", "torch.nn.modules.pooling", "dltricks.measure.receptive_field"),
        quick={"depth": 4, "size": 64},
        full={"depth": 4, "size": 64}, seeds={"quick": 1, "full": 1}, budget_s=1,
        rule=Exact(checks=("striding enlarges the receptive field", "pooling enlarges the receptive field",
                           "striding cuts compute", "striding loses resolution"))),
    Tip(id="conv.dilation", title="Dilation: bigger RF at full resolution",
        claim="Dilated (atrous) convolutions grow the receptive field as fast as striding without losing resolution.",
        source="the Dilated Convolution README; Yu & Koltun 2016", section=CONV,
        experiment=f"{X}.conv:downsampling_vs_dilation",
        exercises=("torch.nn.modules.conv", "dltricks.measure.receptive_field"),
        quick={"depth": 4, "size": 64}, full={"depth": 4, "size": 64}, seeds={"quick": 1, "full": 1}, budget_s=1,
        rule=Exact(checks=("dilation enlarges the receptive field", "dilation keeps full resolution"))),
    _train_tip(id="conv.multiscale-input", title="Multi-scale two-pathway input",
               claim="Adding a downsampled pathway to the full-resolution one and fusing them (the README's two-pathway "
                     "input) improves accuracy over the full-resolution pathway alone (the extra pathway's weights "
                     "are reported).", source=f"{README} (multi-scale input)", section=CONV,
               experiment=f"{X}.training:multiscale_input", exercises=("dltricks.layers.multiscale",),
               requires=TRAIN_REQ + ("dltricks.layers.multiscale:TwoPathwayBlock",),
               quick={"subset": 2000, "epochs": 1, "width": 8}, full={"subset": 8000, "epochs": 3, "width": 8},
               budget_s=8, rule=Effect("val_acc", "two pathways", "one pathway", min_effect=0.005)),
    Tip(id="conv.bottleneck", title="Bottleneck and depthwise-separable savings",
        claim="A 1x1 bottleneck and depthwise-separable convolutions cut weights by the lecture's figures: 737,280 "
              "(two 3x3) -> 180,224 (bottleneck) -> 84,800 (depthwise separable) on a 64-channel input, and ten "
              "3x3 depthwise-separable filters on 3 channels have 57 weights.",
        source=f"{LECTURE} (bottleneck, MobileNet); He et al. 2016; Howard et al. 2017", section=CONV,
        experiment=f"{X}.conv:conv_savings", exercises=("dltricks.layers.conv",), requires=("dltricks.layers.conv:SeparableConv2d",),
        seeds={"quick": 1, "full": 1}, budget_s=1,
        rule=Exact(checks=("two 3x3 convs has the lecture's 737,280 weights",
                           "1x1-3x3-1x1 bottleneck has the lecture's 180,224 weights",
                           "two depthwise-separable 3x3 has the lecture's 84,800 weights",
                           "ten DS 3x3 filters on 3 channels has the lecture's 57 weights",
                           "bottleneck saves weights over two 3x3", "depthwise-separable saves weights over the bottleneck",
                           "ResNet bottleneck saves weights over two 3x3 at 256"))),
    Tip(id="conv.factorized", title="Factorized k x 1 + 1 x k convolutions",
        claim="Replacing a 7x7 convolution 64->256 (802,816 weights) by 1x7 then 7x1 (573,440) keeps the 7x7 "
              "receptive field with 29 % fewer weights and MACs.",
        source=f"{LECTURE}; Szegedy et al., Inception v3, 2016", section=CONV, experiment=f"{X}.conv:conv_savings",
        exercises=("dltricks.layers.conv",), requires=("dltricks.layers.conv:FactorizedConv2d",),
        seeds={"quick": 1, "full": 1}, budget_s=1,
        rule=Exact(checks=("7x7 conv has the lecture's 802,816 weights", "1x7 then 7x1 has the lecture's 573,440 weights",
                           "factorized 1x7+7x1 saves weights over 7x7", "savings carry over to MACs"))),
    _train_tip(id="conv.group-cardinality", title="Cardinality at equal parameters",
               claim="At equal parameters (11,610 each), bottlenecks whose 3x3 convolution is split into 8 groups and "
                     "made twice as wide (higher cardinality, ResNeXt) are more accurate than plain narrow bottlenecks.",
               source=f"{README}; Xie et al., ResNeXt 2017", section=CONV, experiment=f"{X}.training:group_cardinality",
               exercises=("dltricks.layers.conv",),
               quick={"subset": 2000, "epochs": 1, "width": 16, "blocks": 2, "groups": 8, "mid_plain": 8,
                      "mid_grouped": 16, "lr": 0.02},
               full={"subset": 8000, "epochs": 3, "width": 16, "blocks": 2, "groups": 8, "mid_plain": 8,
                     "mid_grouped": 16, "lr": 0.02},
               budget_s=10, rule=Effect("val_acc", "grouped", "plain", min_effect=0.005)),
    _train_tip(id="conv.wide-vs-deep", title="Wide vs deep at equal parameters",
               claim="At (nearly) equal parameters, a wide shallow residual CNN (1 block per stage, width 14) is at "
                     "least as accurate as a deep thin one (4 blocks per stage, width 8).",
               source=f"{README}; Zagoruyko & Komodakis, Wide ResNets 2016", section=CONV,
               experiment=f"{X}.training:wide_vs_deep", exercises=("dltricks.layers.conv",),
               quick={"subset": 2000, "epochs": 1, "deep_width": 8, "deep_blocks": 4, "wide_width": 14, "wide_blocks": 1},
               full={"subset": 8000, "epochs": 3, "deep_width": 8, "deep_blocks": 4, "wide_width": 14, "wide_blocks": 1},
               budget_s=10, rule=NonInferior("val_acc", "wide", "deep", margin=0.01)),
    _train_tip(id="conv.squeeze-excitation", title="Squeeze-and-excitation",
               claim="Adding squeeze-and-excitation channel attention to a small CNN improves accuracy for a few extra weights.",
               source=f"{README}; Hu et al., SENet 2018", section=CONV, experiment=f"{X}.training:squeeze_excitation",
               exercises=("dltricks.layers.se",), requires=TRAIN_REQ + ("dltricks.layers.se",),
               quick={"subset": 2000, "epochs": 1, "width": 8}, full={"subset": 8000, "epochs": 3, "width": 8},
               budget_s=10, rule=Effect("val_acc", "with SE", "without SE", min_effect=0.003)),
    Tip(id="conv.spp", title="Spatial pyramid pooling for any input size",
        claim="Spatial pyramid pooling gives a fixed-length vector from inputs of any size, so one classifier serves "
              "all sizes.", source=f"{README}; He et al., SPP-net 2014", section=CONV,
        experiment=f"{X}.wired:spp_fixed_length", requires=("dltricks.layers.spp",), exercises=("dltricks.layers.spp",),
        seeds={"quick": 1, "full": 1}, budget_s=1,
        rule=Exact(checks=("same output length for every input size", "output length = C x sum of bins^2"))),
    Tip(id="conv.transposed-checkerboard", title="Transposed-conv checkerboard",
        claim="A transposed convolution whose kernel is not divisible by its stride paints a checkerboard on a "
              "constant input; a divisible kernel overlaps evenly, and resize + convolution never does.",
        source=f"{LECTURE} (deconvolution); Odena et al., Distill 2016", section=CONV,
        experiment=f"{X}.conv:checkerboard", exercises=("torch.nn.modules.conv",), seeds={"quick": 1, "full": 1},
        quick={"size": 16, "random_trials": 8, "uneven_kernel": 3, "even_kernel": 4, "stride": 2},
        full={"size": 32, "random_trials": 32, "uneven_kernel": 3, "even_kernel": 4, "stride": 2}, budget_s=1,
        rule=Exact(checks=("the uneven kernel gives a checkerboard", "the even kernel gives an even overlap",
                           "resize + conv gives no checkerboard for any weights"))),
    # ---------------------------------------------------------------------------------------------- dense prediction
    Tip(id="seg.aspp-degeneration", title="ASPP degenerates at large rates",
        claim="As the atrous rate approaches the feature-map size, fewer and fewer of a 3x3 filter's weights fall on "
              "the map (the rest hit padding) until only its centre tap is left, a 1x1 filter; the image-pooling "
              "branch restores global context (one output sees the whole map).",
        source="the Dilated Convolution README; Chen et al., DeepLabV3 2017, Fig. 4", section=SEG,
        experiment=f"{X}.wired:aspp_degeneration", requires=("dltricks.experiments.segmentation:aspp_degeneration",
                                                             "dltricks.layers.aspp:ASPPPooling"),
        exercises=("dltricks.experiments.segmentation", "dltricks.layers.aspp"), seeds={"quick": 1, "full": 1},
        quick={"feature_size": 65, "max_rate": 72}, full={"feature_size": 65, "max_rate": 72}, budget_s=2,
        rule=Exact(checks=("valid-weight fraction falls as the rate grows",
                           "at a rate near the map size the 3x3 filter degenerates to its centre tap",
                           "image pooling sees the whole map", "the degenerate 3x3 branch sees a single pixel"))),
    Tip(id="seg.skip-connections", title="Skip connections preserve detail",
        claim="In a U-Net, skip connections from the encoder raise the accuracy on pixels next to object boundaries, "
              "where the upsampled coarse features alone lose detail.",
        source=f"{README} (skip connections); {LECTURE} (U-Net); Ronneberger et al. 2015", section=SEG,
        experiment=f"{X}.wired:skip_connections", requires=("dltricks.experiments.segmentation:skip_ablation",),
        exercises=("dltricks.experiments.segmentation", "dltricks.models.segmentation", "dltricks.data.isbi"),
        quick={"base_channels": 8, "steps": 40, "batch_size": 2, "crop_size": 64},
        full={"base_channels": 16, "steps": 300, "batch_size": 4, "crop_size": 128}, budget_s=20,
        rule=Effect("boundary_accuracy", "with skips", "without skips", min_effect=0.01)),
    Tip(id="seg.pooling-invariance", title="Pooling's invariance hurts segmentation",
        claim="Downsampling by 32 (pooling/striding all the way) loses boundary detail: DeepLabV3 at output stride 8 "
              "segments membrane boundaries better than at output stride 32, for more compute. (Quick mode: a "
              "narrow ResNet-18 encoder, 120 steps on 64 px crops.)",
        source=f"{README} (pooling and segmentation); Chen et al., DeepLabV3 2017, Table 1", section=SEG,
        experiment=f"{X}.wired:output_stride", requires=("dltricks.experiments.segmentation:output_stride_tradeoff",),
        exercises=("dltricks.experiments.segmentation", "dltricks.models.segmentation", "dltricks.data.isbi"),
        quick={"encoder": "resnet18", "encoder_kwargs": {"stem_width": 16, "stage_widths": [16, 32, 64, 128]},
               "steps": 120, "batch_size": 4, "crop_size": 64, "lr": 5e-3, "output_strides": [8, 32]},
        full={"encoder": "resnet18", "steps": 300, "batch_size": 4, "crop_size": 128, "output_strides": [8, 32]},
        budget_s=13, rule=Effect("boundary_f1", "output stride 8", "output stride 32", min_effect=0.01)),
    # ----------------------------------------------------------------------------------------- normalisation and optimisation
    _train_tip(id="norm.batchnorm-convergence", title="Batch norm speeds convergence",
               claim="Each at its best learning rate of a grid, a CNN with batch norm reaches a lower mean training "
                     "loss in the same number of steps than without.",
               source=f"{LECTURE}; Ioffe & Szegedy 2015", section=NORM, experiment=f"{X}.training:batchnorm_convergence",
               quick={"subset": 2000, "epochs": 1, "batch_size": 32, "lrs": [0.01, 0.03, 0.1, 0.3, 1.0]},
               full={"subset": 8000, "epochs": 1, "batch_size": 32, "lrs": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]}, budget_s=12,
               metrics={"best_train_loss_auc": "lowest mean training loss over the LR grid"},
               rule=Effect("best_train_loss_auc", "batch norm", "no norm", higher_is_better=False, min_effect=0.05)),
    _train_tip(id="norm.batchnorm-large-lr", title="Batch norm allows a larger learning rate",
               claim="The largest learning rate at which a CNN still trains is higher with batch norm than without "
                     "(by at least a factor 2.5 on the grid).",
               source=f"{LECTURE}; Ioffe & Szegedy 2015, Sec. 3.3", section=NORM, experiment=f"{X}.training:batchnorm_large_lr",
               quick={"subset": 2000, "epochs": 1, "batch_size": 32, "lrs": [0.01, 0.03, 0.1, 0.3, 1.0]},
               full={"subset": 8000, "epochs": 1, "batch_size": 32, "lrs": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]}, budget_s=1,
               metrics={"log10_max_lr": "log10 of the largest grid LR reaching 50 % validation accuracy"},
               rule=Effect("log10_max_lr", "batch norm", "no norm", min_effect=0.4)),
    _train_tip(id="norm.placement", title="Norm before vs after the activation",
               claim="Putting batch norm before or after the ReLU makes little difference to accuracy (within 1 point).",
               source=f"{README} (BN placement)", section=NORM, experiment=f"{X}.training:norm_placement",
               exercises=("dltricks.layers.conv",), quick={"subset": 2000, "epochs": 1},
               full={"subset": 8000, "epochs": 2}, budget_s=8,
               rule=NonInferior("val_acc", "BN after ReLU", "BN before ReLU", margin=0.01)),
    _train_tip(id="norm.small-batch", title="Group norm for small batches",
               claim="With tiny batches (2 images), group norm trains better than batch norm, whose statistics get noisy.",
               source=f"{README}; Wu & He, Group Normalization 2018", section=NORM, experiment=f"{X}.training:small_batch_norm",
               exercises=("dltricks.layers.norm",), quick={"subset": 600, "epochs": 1, "batch_size": 2},
               full={"subset": 2000, "epochs": 1, "batch_size": 2}, budget_s=12,
               rule=Effect("val_acc", "group norm", "batch norm", min_effect=0.01)),
    Tip(id="optim.activations", title="ReLU keeps gradients alive, sigmoid kills them",
        claim="In a 20-layer network at initialisation, ReLU and LeakyReLU keep the per-layer gradient norm of the "
              "first layer within an order of magnitude of the last layer's, while sigmoid's shrinks by many orders.",
        source=f"{LECTURE} (activations); Glorot & Bengio 2010; He et al. 2015", section=NORM,
        experiment=f"{X}.gradients:activation_gradient_flow", exercises=("torch.nn.modules.activation",),
        quick={"depth": 20, "width": 256}, full={"depth": 20, "width": 256}, seeds={"quick": 3, "full": 5}, budget_s=2,
        metrics={"log10_grad_ratio": "log10(||grad W_1|| / ||grad W_L||)"},
        rule=AllOf((Effect("log10_grad_ratio", "relu", "sigmoid", min_effect=1.0),
                    Effect("log10_grad_ratio", "leaky_relu", "sigmoid", min_effect=1.0)))),
    _train_tip(id="arch.residual-degradation", title="Residual connections fix degradation",
               claim="A deep plain network (16 two-layer blocks) trains worse than a shallow one, and the same deep "
                     "network with identity shortcuts reaches a lower training loss than the plain one.",
               source=f"{LECTURE}; He et al., ResNet 2016, Fig. 1", section=NORM, experiment=f"{X}.training:residual_degradation",
               quick={"subset": 2000, "epochs": 2, "depth": 16}, full={"subset": 8000, "epochs": 3, "depth": 20},
               budget_s=6, rule=Effect("final_train_loss", "residual", "plain", higher_is_better=False, min_effect=0.05)),
    _train_tip(id="optim.adaptive-vs-sgd", title="Adam / RMSProp / momentum vs plain SGD",
               claim="At their usual learning rates, Adam, RMSProp and SGD with momentum reach a lower training loss "
                     "than plain SGD in the same number of steps.",
               source=f"{LECTURE} (optimizers)", section=NORM, experiment=f"{X}.training:optimizers",
               quick={"subset": 2000, "epochs": 1}, full={"subset": 8000, "epochs": 2}, budget_s=16,
               rule=AllOf((Effect("train_loss_auc", "adam", "sgd", higher_is_better=False, min_effect=0.05),
                           Effect("train_loss_auc", "rmsprop", "sgd", higher_is_better=False, min_effect=0.05),
                           Effect("train_loss_auc", "sgd+momentum", "sgd", higher_is_better=False, min_effect=0.05)))),
    _train_tip(id="optim.lr-annealing", title="LR annealing beats a constant LR",
               claim="Annealing the learning rate (cosine, one-cycle) ends at a lower validation loss than keeping it constant.",
               source=f"{LECTURE} (learning-rate schedules)", section=NORM, experiment=f"{X}.training:lr_annealing",
               quick={"subset": 2000, "epochs": 2, "lr": 0.05}, full={"subset": 8000, "epochs": 4, "lr": 0.05}, budget_s=12,
               rule=AllOf((Effect("val_loss", "cosine", "constant", higher_is_better=False, min_effect=0.01),
                           Effect("val_loss", "one-cycle", "constant", higher_is_better=False, min_effect=0.01)))),
    Tip(id="optim.warmup-transformers", title="Warmup stabilises Transformers",
        claim="With the same peak learning rate, a post-LN Transformer trained with linear learning-rate warm-up "
              "ends more accurate than without. (Quick mode: 150 steps of 32 dates, no dropout.)",
        source=f"{README}; Xiong et al. 2020; Vaswani et al. 2017", section=NORM,
        experiment=f"{X}.wired:transformer_warmup", requires=("dltricks.experiments.attention:train_dates",),
        exercises=("dltricks.experiments.attention", "dltricks.models.transformer", "dltricks.layers.transformer"),
        quick={"steps": 150, "batch_size": 32, "lr": 3e-3, "warmup": 40, "train_size": 4800, "val_size": 200,
               "drop_rate": 0.0},
        full={"steps": 600, "lr": 3e-3, "warmup": 100, "train_size": 20000}, budget_s=22,
        rule=Effect("exact_match", "warmup", "no warmup", min_effect=0.02)),
    Tip(id="optim.pre-ln", title="Pre-LN vs post-LN",
        claim="Without warm-up, a pre-LN Transformer trains better than the same post-LN Transformer. (Quick mode: "
              "150 steps of 32 dates, no dropout; the post-LN run is shared with optim.warmup-transformers.)",
        source=f"{README}; Xiong et al. 2020", section=NORM,
        experiment=f"{X}.wired:transformer_pre_ln", requires=("dltricks.experiments.attention:train_dates",),
        exercises=("dltricks.experiments.attention", "dltricks.models.transformer", "dltricks.layers.transformer"),
        quick={"steps": 150, "batch_size": 32, "lr": 3e-3, "train_size": 4800, "val_size": 200, "drop_rate": 0.0},
        full={"steps": 600, "lr": 3e-3, "train_size": 20000}, budget_s=11,
        rule=Effect("exact_match", "pre-LN", "post-LN", min_effect=0.02)),
    _train_tip(id="optim.gradient-clipping", title="Gradient clipping prevents explosion",
               claim="At a learning rate where an unnormalised MLP blows up (NaN loss), clipping the gradient norm "
                     "keeps training finite and ends at a lower loss.",
               source=f"{LECTURE}; Pascanu et al. 2013", section=NORM, experiment=f"{X}.training:gradient_clipping",
               quick={"subset": 2000, "epochs": 1, "lr": 2.0, "clip": 1.0},
               full={"subset": 8000, "epochs": 1, "lr": 2.0, "clip": 1.0}, budget_s=2,
               rule=Effect("final_train_loss", "clipped", "no clipping", higher_is_better=False, min_effect=0.1)),
    _train_tip(id="optim.mixed-precision", title="Mixed precision keeps accuracy",
               claim="Training with bf16 autocast reaches the same accuracy as fp32 (within 1 point).",
               source=f"{LECTURE}; Micikevicius et al. 2018", section=NORM, experiment=f"{X}.training:mixed_precision",
               quick={"subset": 2000, "epochs": 1}, full={"subset": 8000, "epochs": 2}, budget_s=12,
               rule=NonInferior("val_acc", "bf16 autocast", "fp32", margin=0.01)),
    # ---------------------------------------------------------------------------------------------- regularisation
    _train_tip(id="reg.dropout", title="Dropout against overfitting",
               claim="On a small training set, dropout narrows the gap between training and validation loss.",
               source=f"{LECTURE}; Srivastava et al. 2014", section=REG, experiment=f"{X}.training:dropout",
               quick={"subset": 1000, "epochs": 20, "p": 0.5}, full={"subset": 1000, "epochs": 40, "p": 0.5}, budget_s=12,
               rule=Effect("generalization_gap", "dropout 0.5", "no dropout", higher_is_better=False, min_effect=0.02)),
    _train_tip(id="reg.too-much-dropout", title="Too much dropout underfits",
               claim="With dropout 0.9 the network underfits: its training loss stays well above the one without dropout.",
               source=f"{LECTURE}", section=REG, experiment=f"{X}.training:dropout",
               quick={"subset": 1000, "epochs": 20, "p": 0.9}, full={"subset": 1000, "epochs": 40, "p": 0.9}, budget_s=12,
               rule=Effect("train_loss", "no dropout", "dropout 0.9", higher_is_better=False, min_effect=0.05)),
    _train_tip(id="reg.weight-decay", title="Weight decay against overfitting",
               claim="On a small training set, L2 weight decay lowers the validation loss.",
               source=f"{LECTURE}; Loshchilov & Hutter 2019", section=REG, experiment=f"{X}.training:weight_decay",
               quick={"subset": 1000, "epochs": 20, "wd": 5e-3}, full={"subset": 1000, "epochs": 40, "wd": 5e-3}, budget_s=10,
               rule=Effect("val_loss", "weight decay", "no weight decay", higher_is_better=False, min_effect=0.01)),
    _train_tip(id="reg.augmentation", title="Data augmentation",
               claim="On a small training set, random crops and small rotations raise validation accuracy.",
               source=f"{LECTURE}; {README}", section=REG, experiment=f"{X}.training:augmentation",
               quick={"subset": 1000, "epochs": 12, "crop_padding": 2, "rotate_degrees": 10.0},
               full={"subset": 1000, "epochs": 24, "crop_padding": 2, "rotate_degrees": 10.0}, budget_s=12,
               rule=Effect("val_acc", "augmented", "no augmentation", min_effect=0.005)),
    _train_tip(id="reg.label-smoothing", title="Label smoothing: accuracy and calibration",
               claim="Label smoothing (eps 0.1) does not hurt accuracy and lowers the expected calibration error of an "
                     "over-confident network.",
               source=f"{README}; Szegedy et al. 2016; Mueller, Kornblith & Hinton 2019", section=REG,
               experiment=f"{X}.training:label_smoothing", exercises=("dltricks.measure.calibration",),
               quick={"subset": 1000, "epochs": 20, "eps": 0.1}, full={"subset": 1000, "epochs": 40, "eps": 0.1}, budget_s=10,
               rule=AllOf((Effect("val_ece", "label smoothing", "hard labels", higher_is_better=False, min_effect=0.005),
                           NonInferior("val_acc", "label smoothing", "hard labels", margin=0.01)))),
    # ---------------------------------------------------------------------------------------------- architectures
    Tip(id="arch.attention-long-range", title="Attention vs small receptive field",
        claim="On tasks that need long-range recall (Selective Copying, Induction Heads), causal self-attention is "
              "more accurate than a causal gated CNN whose convolution sees only 4 tokens. (Quick mode: the two "
              "recall tasks at lengths 32 and 16, 300 steps, d_model 32.)",
        source=f"{LECTURE} (attention)", section=ARCH,
        experiment=f"{X}.wired:attention_long_range", requires=("dltricks.experiments.ssm:h2_sequence",),
        exercises=("dltricks.experiments.ssm", "dltricks.layers.attention", "dltricks.layers.ssm"),
        quick={"quick": True, "tasks": ["selective_copying", "induction_heads"], "steps": 300},
        full={"quick": False, "tasks": ["selective_copying", "induction_heads", "smnist", "listops"]},
        seeds={"quick": 1, "full": 1}, budget_s=11,
        metrics={"accuracy": "token accuracy (classification accuracy for sMNIST / ListOps); one value per task"},
        rule=Effect("accuracy", "attention", "Gated CNN", min_effect=0.05, min_seeds=3)),
    Tip(id="arch.efficient-attention", title="Efficient attention cuts the quadratic cost",
        claim="The time of full self-attention grows about quadratically with sequence length; local-window and "
              "Linformer attention grow about linearly (log-log slope smaller by at least 0.5).",
        source=f"{README}; Beltagy et al. 2020; Wang et al. 2020", section=ARCH,
        experiment=f"{X}.attention:attention_scaling", exercises=("dltricks.layers.attention",),
        requires=("dltricks.layers.attention:LinformerSelfAttention", "dltricks.layers.attention:LocalSelfAttention"),
        quick={"lengths": [512, 1024, 2048, 4096], "repeats": 3, "min_time": 0.02},
        full={"lengths": [512, 1024, 2048, 4096, 8192], "repeats": 5, "min_time": 0.05},
        seeds={"quick": 2, "full": 3}, budget_s=10, metrics={"slope": "d log(time) / d log(T)"},
        rule=AllOf((Effect("slope", "full attention", "local window 32", min_effect=0.5),
                    Effect("slope", "full attention", "Linformer k=64", min_effect=0.5)))),
    Tip(id="arch.cnn-vs-vit-small-data", title="CNN beats ViT on small data",
        claim="Trained from scratch on a small data set (10,000 CIFAR-10 images), a ConvNeXt-style CNN beats a ViT of "
              "similar size. (The README's second half, that a hybrid closes the gap, is not measured here. Quick "
              "mode: both scaled down to about 0.13-0.16 M parameters, 2,000 embedded MNIST digits, 2 epochs.)",
        source=f"{README}; Dosovitskiy et al. 2021", section=ARCH,
        experiment=f"{X}.wired:cnn_vs_vit", requires=("dltricks.experiments.ssm:h1_vision",),
        exercises=("dltricks.experiments.ssm", "dltricks.models"), quick=H1_QUICK,
        full={"epochs": 10, "batch_size": 128, "subset": 10000, "val_subset": 2000}, budget_s=6,
        rule=Effect("val_acc", "ConvNeXt", "ViT", min_effect=0.02)),
    Tip(id="arch.flops-vs-latency", title="FLOPs are not latency",
        claim="At MobileNet's first-stage shape (32 channels, 112x112) a depthwise-separable 3x3 block needs 7x fewer "
              "MACs than a full 3x3 convolution but runs far less than 7x faster: MACs overestimate the real speed-up.",
        source=f"{LECTURE} (efficiency); Ma et al., ShuffleNet v2 2018", section=ARCH,
        experiment=f"{X}.efficiency:flops_vs_latency", exercises=("dltricks.layers.conv",),
        requires=("dltricks.layers.conv:SeparableConv2d",),
        quick={"channels": 32, "size": 112, "batch": 1, "repeats": 5, "min_time": 0.02},
        full={"channels": 32, "size": 112, "batch": 1, "repeats": 9, "min_time": 0.05}, seeds={"quick": 3, "full": 5}, budget_s=5,
        rule=Effect("log2_speedup", "predicted by MACs", "measured", min_effect=0.5)),
    Tip(id="arch.params-vs-memory", title="Parameters are not memory",
        claim="A small conv net with 300x fewer parameters than an MLP can still need more memory for a training "
              "step (batch 64, 64x64 inputs), because activations at high resolution dominate.", source=f"{LECTURE} (efficiency)", section=ARCH,
        experiment=f"{X}.efficiency:params_vs_memory", exercises=("torch.nn.modules.conv",),
        seeds={"quick": 1, "full": 1}, budget_s=1,
        rule=Exact(checks=("the conv net has fewer parameters", "...but needs more training memory"))),
    # ---------------------------------------------------------------------------------------------- state-space models
    Tip(id="ssm.mambaout-h1", title="MambaOut H1: no SSM needed for images",
        claim="For image classification, MambaOut (gated CNN, no SSM) is at least as accurate as Vision Mamba at "
              "matched parameters (CIFAR-10). (Quick mode: both scaled down to about 0.14 M parameters, 2,000 "
              "embedded MNIST digits, 2 epochs.)", source="the MambaOut blog; Yu & Wang 2024", section=SSM,
        experiment=f"{X}.wired:mambaout_h1", requires=("dltricks.experiments.ssm:h1_vision",),
        exercises=("dltricks.experiments.ssm", "dltricks.models"), quick=H1_QUICK,
        full={"epochs": 10, "batch_size": 128, "subset": 10000, "val_subset": 2000}, budget_s=12,
        rule=NonInferior("val_acc", "MambaOut", "ViM", margin=0.01)),
    Tip(id="ssm.mambaout-h2", title="MambaOut H2: SSM helps long causal sequences",
        claim="On long causal sequence tasks (Selective Copying, Induction Heads), Mamba is more accurate than the "
              "same block without its SSM (the causal Gated CNN). (Quick mode: lengths 32 and 16, 300 steps, "
              "d_model 32.)",
        source="the MambaOut blog; Yu & Wang 2024", section=SSM,
        experiment=f"{X}.wired:mambaout_h2", requires=("dltricks.experiments.ssm:h2_sequence",),
        exercises=("dltricks.experiments.ssm", "dltricks.layers.ssm"),
        quick={"quick": True, "tasks": ["selective_copying", "induction_heads"], "steps": 300},
        full={"quick": False, "tasks": ["selective_copying", "induction_heads", "smnist", "listops"]},
        seeds={"quick": 1, "full": 1}, budget_s=13,
        metrics={"accuracy": "token accuracy (classification accuracy for sMNIST / ListOps); one value per task"},
        rule=Effect("accuracy", "Mamba", "Gated CNN", min_effect=0.05, min_seeds=3)),
    Tip(id="ssm.selective-copying", title="Selective (S6) vs time-invariant (S4) SSM",
        claim="On Selective Copying, a selective SSM (S6) without the gate learns the task far better than a "
              "time-invariant S4 without the gate (Mamba paper: 97.0 % vs 18.3 %). (Quick mode: length 32, 4 "
              "tokens to copy from 6 symbols, d_model 32, 300 steps.)",
        source="Gu & Dao, Mamba 2023, Table 1", section=SSM,
        experiment=f"{X}.wired:selective_copying", requires=("dltricks.experiments.ssm:gate_ablation",),
        exercises=("dltricks.experiments.ssm", "dltricks.layers.ssm"),
        quick={"seq_len": 32, "num_tokens": 4, "vocab_size": 8, "d_model": 32, "steps": 300, "lr": 3e-3, "warmup": 20},
        full={"seq_len": 256, "steps": 1500}, budget_s=11,
        rule=Effect("accuracy", "S6", "S4", min_effect=0.1)),
    Tip(id="ssm.mamba-adaptive-depth", title="\"Mamba adapts depth/width to the input\"",
        claim="The README says Mamba scales its depth and width dynamically with the input and integrates attention "
              "modules. This tip tests that description against the published block (Gu & Dao 2023): a refuted "
              "verdict means the README's description is wrong.",
        source=f"{README}; Gu & Dao 2023", section=SSM, experiment=f"{X}.wired:mamba_adaptive_depth",
        requires=("dltricks.experiments.ssm:claim_dynamic_depth_width",), exercises=("dltricks.experiments.ssm", "dltricks.layers.ssm"),
        seeds={"quick": 1, "full": 1}, budget_s=2,
        rule=Exact(checks=("executed layers differ between inputs", "layer output widths differ between inputs",
                           "the block contains an attention module"),
                   meaning="The checks encode the README's claim itself, so a refuted verdict means the README is wrong.")),
]


def get_catalog() -> list[Tip]:
    ids = [t.id for t in CATALOG]
    if len(ids) != len(set(ids)):  # pragma: no cover - a programming error
        raise RuntimeError("duplicate tip ids in the catalog")
    return list(CATALOG)
