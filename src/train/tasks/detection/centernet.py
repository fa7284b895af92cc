"""A compact CenterNet-style detector: objects as points, built from plain torch/torchvision ops.

    image (B, C, H, W) -> small residual backbone (strides 4..32) -> top-down feature pyramid
    merged at stride 4 -> three maps at stride 4: `objectness` (B, 1, H/4, W/4), one peak per
    object centre whatever its class; `classes` (B, classes, H/4, W/4), the class of the object
    at each cell; `regression` (B, 4, H/4, W/4), from each cell the distances to the box's left,
    top, right and bottom sides.

Training: a focal loss on the objectness map against Gaussians drawn at every object's centre
(elliptical, sized by the box: Zhou et al., "Objects as Points", 2019), and, at every cell near a
centre (where its Gaussian is >= 0.3), weighted by the Gaussian, a GIoU loss on the box it
regresses (TTFNet, Liu et al. 2020: many regression samples per object converge in far fewer
epochs than one) and cross-entropy on its class. Objectness and class are separate: with one
focal heatmap per class, each class map saw a tenth of the positives and a 64-image set was not
memorised in 160 steps (train mAP@0.5 0.05); class-agnostic, the same net reached 0.93.
Decoding: objectness peaks by a 3x3 max-pool, score = objectness x class probability, the top k
over every (cell, class), each one's box in input pixels. No anchors and no NMS: the decode is a
handful of tensor operations that export to ONNX as they are.

About 0.5 M parameters at the default widths; no pretrained weights (it trains from scratch in
minutes on a CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss

Target = dict[str, torch.Tensor]


def _conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, c), nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def _stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(_conv_bn(cin, cout, stride=2), *(_Residual(cout) for _ in range(blocks)))


class CenterNet(nn.Module):
    """The network and its three jobs: `forward` (raw head outputs), `loss` and `decode`."""

    stride = 4
    has_eval_loss = True

    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, ...] = (24, 48, 96, 160),
                 blocks: tuple[int, ...] = (1, 1, 1, 0), neck: int = 48, max_detections: int = 100,
                 heatmap_weight: float = 1.0, box_weight: float = 5.0, class_weight: float = 1.0,
                 gaussian_alpha: float = 0.54, box_area: float = 0.3, distance_scale: float = 4.0):
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError("CenterNet needs four stage widths and block counts (strides 4, 8, 16, 32)")
        self.num_classes = num_classes
        self.max_detections = max_detections
        self.weights = (heatmap_weight, box_weight, class_weight)
        self.gaussian_alpha = gaussian_alpha
        self.box_area = box_area  # cells regress their object's box where its Gaussian is at least this
        self.distance_scale = distance_scale  # softplus(0) * scale = 2.8 cells (11 px) to each side at start
        self.stem = _conv_bn(in_channels, widths[0] // 2 + 4, stride=2)
        chans = [widths[0] // 2 + 4, *widths]
        self.stages = nn.ModuleList(_stage(chans[i], chans[i + 1], blocks[i]) for i in range(4))
        self.laterals = nn.ModuleList(nn.Conv2d(w, neck, 1) for w in widths)
        self.smooth = _conv_bn(neck, neck)
        # objectness and class logits share one hidden layer: channel 0 and channels 1..classes
        self.heatmap = nn.Sequential(_conv_bn(neck, neck), nn.Conv2d(neck, 1 + num_classes, 1))
        self.regression = nn.Sequential(_conv_bn(neck, neck), nn.Conv2d(neck, 4, 1))
        # A prior of 0.1 on every objectness cell: the focal loss starts small instead of swamping
        # the first steps with easy negatives (RetinaNet's initialisation).
        nn.init.constant_(self.heatmap[-1].bias[:1], -math.log((1 - 0.1) / 0.1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(objectness logits (B, 1, h, w), class logits (B, classes, h, w), regression (B, 4, h, w))
        at stride 4."""
        feats = []
        y = self.stem(x)
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        top = self.laterals[3](feats[3])
        for i in (2, 1, 0):
            lat = self.laterals[i](feats[i])
            top = lat + F.interpolate(top, size=lat.shape[-2:], mode="nearest")
        f = self.smooth(top)
        heat = self.heatmap(f)
        return heat[:, :1], heat[:, 1:], self.regression(f)

    # -- training -------------------------------------------------------------------------------

    def encode(self, targets: list[Target], h: int, w: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Targets at the output resolution: the Gaussian objectness map (B, 1, h, w) and, for every
        cell that regresses a box, its flat index into (B*h*w), its object's box [x1, y1, x2, y2]
        in cells, its object's class and its weight (the Gaussian's value there; 1 at the centre)."""
        device = targets[0]["boxes"].device if targets else torch.device("cpu")
        heat = torch.zeros(len(targets), 1, h, w, device=device)
        idx, box, label, weight = [], [], [], []
        ys = torch.arange(h, device=device, dtype=torch.float32)
        xs = torch.arange(w, device=device, dtype=torch.float32)
        for b, t in enumerate(targets):
            boxes = t["boxes"].float().reshape(-1, 4) / self.stride
            if boxes.numel() == 0:
                continue
            bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)
            bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
            ix = ((boxes[:, 0] + boxes[:, 2]) / 2).clamp(0, w - 1e-3).floor()
            iy = ((boxes[:, 1] + boxes[:, 3]) / 2).clamp(0, h - 1e-3).floor()
            sx = (self.gaussian_alpha * bw / 6).clamp(min=0.5)
            sy = (self.gaussian_alpha * bh / 6).clamp(min=0.5)
            gx = torch.exp(-((xs[None, :] - ix[:, None]) ** 2) / (2 * sx[:, None] ** 2))  # (N, w)
            gy = torch.exp(-((ys[None, :] - iy[:, None]) ** 2) / (2 * sy[:, None] ** 2))  # (N, h)
            g = gy[:, :, None] * gx[:, None, :]  # (N, h, w), exactly 1 at each centre cell
            near, owner = g.max(0)  # a cell near two centres belongs to the nearer object
            heat[b, 0] = near
            cy, cx = torch.nonzero(near >= self.box_area, as_tuple=True)
            idx.append(b * h * w + cy * w + cx)
            box.append(boxes[owner[cy, cx]])
            label.append(t["labels"].long().reshape(-1)[owner[cy, cx]])
            weight.append(near[cy, cx])
        cat = (lambda v, n: torch.cat(v) if v else torch.zeros((0, *n), device=device))
        return heat, {"index": cat(idx, ()).long(), "box": cat(box, (4,)), "label": cat(label, ()).long(),
                      "weight": cat(weight, ())}

    def _boxes(self, reg: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
        """Regression (..., 4) at cells (cx, cy) -> boxes [x1, y1, x2, y2] in cells."""
        d = F.softplus(reg) * self.distance_scale
        px, py = cx + 0.5, cy + 0.5
        return torch.stack([px - d[..., 0], py - d[..., 1], px + d[..., 2], py + d[..., 3]], dim=-1)

    def loss(self, images: torch.Tensor, targets: list[Target]) -> dict[str, torch.Tensor]:
        """`loss` (the weighted sum) and its parts `loss_heatmap` (objectness focal loss), `loss_box`
        (GIoU) and `loss_class` (cross-entropy)."""
        heat_logits, cls_logits, reg = self(images)
        h, w = heat_logits.shape[-2:]
        heat, cells = self.encode(targets, h, w)
        n = max(int((heat == 1).sum()), 1)
        l_heat = focal_loss(heat_logits.float(), heat) / n
        idx = cells["index"]
        pix = idx % (h * w)
        pred = self._boxes(reg.float().permute(0, 2, 3, 1).reshape(-1, 4)[idx],
                           (pix % w).float(), torch.div(pix, w, rounding_mode="floor").float())
        wt = cells["weight"]
        total = wt.sum().clamp(min=1e-6)
        l_box = (generalized_box_iou_loss(pred, cells["box"], reduction="none") * wt).sum() / total
        logits = cls_logits.float().permute(0, 2, 3, 1).reshape(-1, self.num_classes)[idx]
        l_cls = (F.cross_entropy(logits, cells["label"], reduction="none") * wt).sum() / total
        wh, wb, wc = self.weights
        return {"loss": wh * l_heat + wb * l_box + wc * l_cls, "loss_heatmap": l_heat.detach(),
                "loss_box": l_box.detach(), "loss_class": l_cls.detach()}

    # -- inference ------------------------------------------------------------------------------

    def decode(self, heat_logits: torch.Tensor, cls_logits: torch.Tensor, reg: torch.Tensor,
               image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(boxes (B, k, 4) [x1, y1, x2, y2] in input pixels, scores (B, k), labels (B, k)), best
        first; k = max_detections. Traceable: max-pool peaks and top-k, no data-dependent shapes."""
        b, c, h, w = cls_logits.shape
        heat = torch.sigmoid(heat_logits)
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
        scores_all = peaks * torch.softmax(cls_logits, dim=1)  # (B, classes, h, w)
        k = min(self.max_detections, c * h * w)
        scores, inds = scores_all.reshape(b, -1).topk(k)
        labels = torch.div(inds, h * w, rounding_mode="floor")
        pix = inds - labels * (h * w)
        ys = torch.div(pix, w, rounding_mode="floor")
        xs = pix - ys * w
        r = reg.reshape(b, 4, h * w).gather(2, pix[:, None, :].expand(b, 4, k))  # (B, 4, k)
        cells = self._boxes(r.transpose(1, 2), xs.to(r.dtype), ys.to(r.dtype))  # (B, k, 4)
        ih, iw = image_size
        limit = torch.tensor([iw, ih, iw, ih], dtype=cells.dtype, device=cells.device)
        boxes = torch.minimum((cells * self.stride).clamp(min=0), limit)
        return boxes, scores, labels

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[Target]:
        """Per image: `boxes` (k, 4) in input pixels, `scores` (k,), `labels` (k,)."""
        heat, cls, reg = self(images)
        boxes, scores, labels = self.decode(heat.float(), cls.float(), reg.float(), tuple(images.shape[-2:]))
        return [{"boxes": bx, "scores": s, "labels": lb} for bx, s, lb in zip(boxes, scores, labels)]


def focal_loss(logits: torch.Tensor, gt: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss, summed (the caller divides by the number
    of objects): cells at a centre (gt == 1) are positives; the others are negatives whose weight
    falls as (1 - gt)^beta near a centre."""
    pos = gt.eq(1).to(logits.dtype)
    log_p = F.logsigmoid(logits)
    log_1p = F.logsigmoid(-logits)
    p = log_p.exp()
    pos_loss = -((1 - p) ** alpha) * log_p * pos
    neg_loss = -((1 - gt) ** beta) * (p ** alpha) * log_1p * (1 - pos)
    return pos_loss.sum() + neg_loss.sum()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
