"""SuperCM added to an existing PyTorch model in a few lines (the README's example, runnable).

    python examples/quickstart.py

Two Gaussian blobs per class in 20-D, 5 labels per class, the rest unlabeled.
"""

import torch
import torch.nn.functional as F
from torch import nn

from supercm import ClusteringModule

torch.manual_seed(0)
K, D, beta = 3, 20, 0.5
means = torch.randn(K, D) * 3
y_all = torch.arange(600) % K
x_all = means[y_all] + torch.randn(600, D)
labeled = torch.cat([(y_all == k).nonzero()[:5, 0] for k in range(K)])
x_lab, y_lab = x_all[labeled], y_all[labeled]

backbone = nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, 32))  # your model, minus its last layer
head = ClusteringModule(in_features=32, num_classes=K)  # replaces the final nn.Linear
opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-3)  # centroids are a buffer, not trained

for step in range(200):
    x_unl = x_all[torch.randint(0, 600, (64,))]
    feats = backbone(torch.cat([x_lab, x_unl]))
    head.update_centroids(feats[: len(y_lab)].detach(), y_lab)  # before the loss, without gradient
    out = head(feats)  # out.logits, out.responsibilities, out.reconstruction
    loss = F.cross_entropy(out.logits[: len(y_lab)], y_lab) + beta * head.loss(feats, out)
    opt.zero_grad()
    loss.backward()
    opt.step()

with torch.no_grad():
    accuracy = (head(backbone(x_all)).logits.argmax(1) == y_all).float().mean().item()  # the CM encoder is the classifier
print(f"accuracy on all 600 points: {accuracy:.3f}")
