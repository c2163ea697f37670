"""Trial of nasgem_digits.yml: train the CNN NNI hands out on scikit-learn's 8x8 digits.

Parameters (NNI's nested format)::

    {"conv1": 16, "kernel": 3, "block": {"_name": "conv", "channels": 32}, "hidden": 64}

The network is conv(conv1, kernel) -> block (conv(channels, 3) | max-pool | identity) -> global
average pool -> linear(hidden) -> linear(10). It trains for EPOCHS epochs with Adam on 80% of the
1,797 images; after each epoch the accuracy on the other 20% is reported with
``nni.report_intermediate_result``, the last one with ``nni.report_final_result``. Loss and accuracy
go to TensorBoard under ``$NNI_OUTPUT_DIR/tensorboard``, the directory the web portal's TensorBoard
button opens (``import nni_plugins`` makes that button find it on NNI 3.0, see docs/nni-compat.md).
"""
import os

import nni
import nni_plugins  # noqa: F401  (NNI 3.0 fixes, incl. the TensorBoard button's directory)
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.tensorboard import SummaryWriter

EPOCHS = 5


def build(params: dict) -> nn.Module:
    c1, k, block = params["conv1"], params["kernel"], params["block"]
    layers = [nn.Conv2d(1, c1, k, padding=k // 2), nn.BatchNorm2d(c1), nn.ReLU()]
    width = c1
    if block["_name"] == "conv":
        layers += [nn.Conv2d(c1, block["channels"], 3, padding=1), nn.BatchNorm2d(block["channels"]), nn.ReLU()]
        width = block["channels"]
    elif block["_name"] == "pool":
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, params["hidden"]), nn.ReLU(),
               nn.Linear(params["hidden"], 10)]
    return nn.Sequential(*layers)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    params = nni.get_next_parameter()
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    split = int(0.8 * len(x))
    train, valid = order[:split], order[split:]
    model = build(params)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    writer = SummaryWriter(os.path.join(os.environ.get("NNI_OUTPUT_DIR", "."), "tensorboard"))
    accuracy = 0.0
    for epoch in range(EPOCHS):
        model.train()
        for batch in train[torch.randperm(len(train))].split(64):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x[valid]).argmax(1) == y[valid]).float().mean().item()
        writer.add_scalar("train_loss", loss.item(), epoch)
        writer.add_scalar("val_acc", accuracy, epoch)
        nni.report_intermediate_result(accuracy)
    writer.close()
    nni.report_final_result(accuracy)


if __name__ == "__main__":
    main()
