"""A small cell-based space for scikit-learn's 8x8 digits: the embedded default of the plugins.

It exists so that every strategy, the CLI and the tests have a real (not tabular) search space that
trains in seconds on a CPU, and that exercises both of NNI's basic mutable modules: each node of a
cell picks its input with an :class:`~nni.nas.nn.pytorch.InputChoice` and its operation with a
:class:`~nni.nas.nn.pytorch.LayerChoice`.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from nni.mutable import label_scope
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace

from ._common import ReLUConvBN, cell_stack, positive_int, set_checked

__all__ = ["DIGITS_OPS", "DigitsCellSpace"]

#: Candidate operations of every node, in choice order.
DIGITS_OPS: tuple[str, ...] = ("conv_3x3", "conv_5x5", "max_pool_3x3", "skip_connect")


def _make_op(name: str, channels: int) -> nn.Module:
    if name == "conv_3x3":
        return ReLUConvBN(channels, 3)
    if name == "conv_5x5":
        return ReLUConvBN(channels, 5)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=1, padding=1)
    return nn.Identity()


class _DigitsCell(nn.Module):
    """Cell of ``num_nodes`` nodes after the input node 0.

    Node ``i`` applies one op (LayerChoice ``{label}/node{i}/op``) to one predecessor among nodes
    ``0 .. i-1`` (InputChoice ``{label}/node{i}/input``, value ``[j]``). Node 1 has a single
    predecessor, so it has no input choice. The cell outputs the mean of nodes ``1 .. num_nodes``.
    """

    def __init__(self, channels: int, num_nodes: int, label: str):
        super().__init__()
        self.num_nodes = num_nodes
        self.ops = nn.ModuleList()
        self.inputs = nn.ModuleList()
        with label_scope(label):
            for i in range(1, num_nodes + 1):
                with label_scope(f"node{i}"):
                    candidates = OrderedDict((name, _make_op(name, channels)) for name in DIGITS_OPS)
                    self.ops.append(LayerChoice(candidates, label="op"))
                    if i > 1:
                        self.inputs.append(InputChoice(n_candidates=i, n_chosen=1, reduction="sum", label="input"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x]
        for i, op in enumerate(self.ops, start=1):
            inp = x if i == 1 else self.inputs[i - 2](states)
            states.append(op(inp))
        return torch.stack(states[1:]).mean(0)


class DigitsCellSpace(ModelSpace):
    """Cell-based search space for 8x8 grey-scale digits (``(B, 1, 8, 8)`` inputs, 10 classes).

    The embedded default space of the plugins: small enough that a frozen sample trains to well
    above chance on scikit-learn's ``load_digits`` in a few CPU seconds, and built only from NNI's
    :class:`~nni.nas.nn.pytorch.LayerChoice` and :class:`~nni.nas.nn.pytorch.InputChoice`, so
    both multi-trial strategies (``freeze``) and one-shot strategies (NNI's DARTS family) work on it.
    It is this project's own design, not a space from a paper, in the style of DARTS/ENAS cells
    (Liu et al., ICLR 2019; Pham et al., ICML 2018) with one input per node.

    Layout: 3x3 conv + BN stem to ``channels``; ``num_cells`` cells, each followed (except the
    last) by 2x2 max pooling (``ceil_mode``, so any number of cells works on 8x8); ReLU, global
    average pooling and a linear classifier. Each cell has ``num_nodes`` nodes; node ``i`` takes one
    of nodes ``0 .. i-1`` (node 0 is the cell input) and applies one of :data:`DIGITS_OPS`
    (ReLU-conv-BN 3x3 and 5x5, 3x3 max pooling, identity); the cell outputs the mean of its nodes.
    Cells do not share choices. Labels, for cell ``k`` and node ``i``: ``cell{k}/node{i}/op``
    (values: op names) and, for ``i >= 2``, ``cell{k}/node{i}/input`` (values: ``[j]``, a list
    with one predecessor index, as NNI's ``InputChoice`` samples).

    Parameters
    ----------
    channels
        Channels of the stem and of every cell.
    num_nodes
        Nodes per cell (not counting the input node).
    num_cells
        Number of cells.
    num_classes
        Number of output classes.
    in_channels
        Channels of the input images.
    """

    def __init__(self, channels: int = 16, num_nodes: int = 3, num_cells: int = 2,
                 num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        set_checked(self, "DigitsCellSpace", positive_int, channels=channels, num_nodes=num_nodes,
                    num_cells=num_cells, num_classes=num_classes, in_channels=in_channels)
        self.stem, self.cells, self.head = cell_stack(
            in_channels, channels, num_cells, num_classes, lambda k: _DigitsCell(channels, num_nodes, label=f"cell{k}"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cells(self.stem(x)))
