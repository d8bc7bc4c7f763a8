"""Print the CNN zoo as a Markdown table: name, input, parameters, forward MACs, paper.

Everything is built on the ``meta`` device, so no memory is allocated and no weights are initialised:
the whole table, VGG's 138 M parameters included, takes seconds. MACs are
``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2 for one image at the model's design input size
(convolutions and matrix products; norms, activations and pooling are not counted).

    .venv/bin/python benchmarks/model_zoo_table.py > /tmp/zoo.md
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from dltricks import create_model, list_models, model_info

CNN_FAMILIES = ("lenet", "alexnet", "vgg", "googlenet", "inception", "resnet", "preact_resnet", "wide_resnet",
                "densenet", "xception", "mobilenet", "efficientnet", "convnext")


def stats(name: str) -> tuple[int, float]:
    info = model_info(name)
    with torch.device("meta"):
        model = create_model(name).eval()
        params = sum(p.numel() for p in model.parameters())
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(1, *info.input_size))
    return params, counter.get_total_flops() / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(CNN_FAMILIES))
    args = parser.parse_args()
    print("| model | input | params | MACs | paper |")
    print("|---|---|---:|---:|---|")
    for family in args.families:
        for name in list_models():
            info = model_info(name)
            if info.family != family:
                continue
            params, macs = stats(name)
            size = "x".join(str(s) for s in info.input_size[1:])
            mac_text = f"{macs / 1e9:.2f} G" if macs >= 1e8 else f"{macs / 1e6:.1f} M"
            print(f"| `{name}` | {size} | {params:,} | {mac_text} | {info.paper} |")


if __name__ == "__main__":
    main()
