"""SuperCM added to an existing PyTorch model in a few lines (the README's example, runnable).

    python examples/quickstart.py

Two Gaussian blobs per class in 20-D, 5 labels per class, the rest unlabeled. The same model
is trained with cross-entropy alone (β = 0) and with SuperCM (β = 0.5); both classify the
blobs, but only SuperCM's loss pulls every feature toward its class centroid, so its feature
clusters are far tighter relative to their separation. That spread, printed last, is what the
CM loss does that cross-entropy does not.
"""

import torch
import torch.nn.functional as F
from torch import nn

from supercm import ClusteringModule

K, D = 3, 20


def make_data():
    torch.manual_seed(0)
    means = torch.randn(2 * K, D) * 3  # two blobs per class
    blob = torch.arange(600) % (2 * K)
    y_all = blob % K
    x_all = means[blob] + torch.randn(600, D)
    labeled = torch.cat([(y_all == k).nonzero()[:5, 0] for k in range(K)])  # from both blobs of each class
    return x_all, y_all, labeled


def train(beta: float, steps: int = 200):
    x_all, y_all, labeled = make_data()
    x_lab, y_lab = x_all[labeled], y_all[labeled]
    torch.manual_seed(1)
    backbone = nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, 32))  # your model, minus its last layer
    head = ClusteringModule(in_features=32, num_classes=K)  # replaces the final nn.Linear
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-3)  # centroids are a buffer

    for step in range(steps):
        x_unl = x_all[torch.randint(0, 600, (64,))]
        feats = backbone(torch.cat([x_lab, x_unl]))
        head.update_centroids(feats[: len(y_lab)].detach(), y_lab)  # before the loss, without gradient
        out = head(feats)  # out.logits, out.responsibilities, out.reconstruction
        loss = F.cross_entropy(out.logits[: len(y_lab)], y_lab) + beta * head.loss(feats, out)
        opt.zero_grad()
        loss.backward()
        opt.step()

    with torch.no_grad():
        feats = backbone(x_all)
        accuracy = (head(feats).logits.argmax(1) == y_all).float().mean().item()  # the CM encoder is the classifier
    return accuracy, cluster_spread(feats, y_all)


def cluster_spread(feats: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared distance of a feature to its class mean, over the mean squared distance
    between class means: small = compact, well separated clusters."""
    means = torch.stack([feats[y == k].mean(0) for k in range(K)])
    within = (feats - means[y]).pow(2).sum(1).mean()
    between = torch.pdist(means).pow(2).mean()
    return float(within / between)


if __name__ == "__main__":
    ce_acc, ce_spread = train(beta=0.0)
    cm_acc, cm_spread = train(beta=0.5)
    print(f"accuracy on all 600 points: CE {ce_acc:.3f}, CE + SuperCM {cm_acc:.3f}")
    print(f"cluster spread (within / between, lower = tighter): CE {ce_spread:.3f}, CE + SuperCM {cm_spread:.3f}")
