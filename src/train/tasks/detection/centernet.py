"""A compact CenterNet-style detector: objects as points, built from plain torch/torchvision ops.

    image (B, C, H, W) -> small residual backbone (strides 4..32) -> top-down feature pyramid
    merged at stride 4 -> heads: `heatmap` (B, classes, H/4, W/4), one peak per object centre,
    and `regression` (B, 4, H/4, W/4): the sub-cell offset of the centre (2) and the box's width
    and height in cells (2).

Training: a focal loss on the heatmap against Gaussians drawn at every object's centre (one per
class channel, sized by the box), L1 on offset and size at the centre cells (Zhou et al., "Objects
as Points", 2019; the elliptical Gaussian of TTFNet). Decoding: local maxima by a 3x3 max-pool,
the top k over all classes, boxes in input pixels. No anchors and no NMS: the decode is a handful
of tensor operations that export to ONNX as they are.

About 0.7 M parameters at the default widths; no pretrained weights (it trains from scratch in
minutes on a CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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
                 heatmap_weight: float = 1.0, size_weight: float = 0.1, offset_weight: float = 1.0,
                 gaussian_alpha: float = 0.54):
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError("CenterNet needs four stage widths and block counts (strides 4, 8, 16, 32)")
        self.num_classes = num_classes
        self.max_detections = max_detections
        self.weights = (heatmap_weight, size_weight, offset_weight)
        self.gaussian_alpha = gaussian_alpha
        self.stem = _conv_bn(in_channels, widths[0] // 2 + 4, stride=2)
        chans = [widths[0] // 2 + 4, *widths]
        self.stages = nn.ModuleList(_stage(chans[i], chans[i + 1], blocks[i]) for i in range(4))
        self.laterals = nn.ModuleList(nn.Conv2d(w, neck, 1) for w in widths)
        self.smooth = _conv_bn(neck, neck)
        self.heatmap = nn.Sequential(_conv_bn(neck, neck), nn.Conv2d(neck, num_classes, 1))
        self.regression = nn.Sequential(_conv_bn(neck, neck), nn.Conv2d(neck, 4, 1))
        # A prior of 0.1 on every heatmap cell: the focal loss starts small instead of swamping
        # the first steps with easy negatives (RetinaNet's initialisation).
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - 0.1) / 0.1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(heatmap logits (B, classes, h, w), regression (B, 4, h, w)) at stride 4."""
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
        return self.heatmap(f), self.regression(f)

    # -- training -------------------------------------------------------------------------------

    def encode(self, targets: list[Target], h: int, w: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Targets at the output resolution: the Gaussian heatmap (B, classes, h, w) and, per
        object, its centre cell's flat index into (B*h*w), offset and size in cells."""
        device = targets[0]["boxes"].device if targets else torch.device("cpu")
        heat = torch.zeros(len(targets), self.num_classes, h, w, device=device)
        idx, off, size = [], [], []
        ys = torch.arange(h, device=device, dtype=torch.float32)
        xs = torch.arange(w, device=device, dtype=torch.float32)
        for b, t in enumerate(targets):
            boxes = t["boxes"].float().reshape(-1, 4) / self.stride
            if boxes.numel() == 0:
                continue
            bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)
            bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
            cx = ((boxes[:, 0] + boxes[:, 2]) / 2).clamp(0, w - 1e-3)
            cy = ((boxes[:, 1] + boxes[:, 3]) / 2).clamp(0, h - 1e-3)
            ix, iy = cx.floor(), cy.floor()
            sx = (self.gaussian_alpha * bw / 6).clamp(min=0.5)
            sy = (self.gaussian_alpha * bh / 6).clamp(min=0.5)
            gx = torch.exp(-((xs[None, :] - ix[:, None]) ** 2) / (2 * sx[:, None] ** 2))  # (N, w)
            gy = torch.exp(-((ys[None, :] - iy[:, None]) ** 2) / (2 * sy[:, None] ** 2))  # (N, h)
            g = gy[:, :, None] * gx[:, None, :]  # (N, h, w), exactly 1 at each centre cell
            labels = t["labels"].long().reshape(-1)
            for c in labels.unique():
                heat[b, c] = torch.maximum(heat[b, c], g[labels == c].amax(0))
            idx.append(b * h * w + iy.long() * w + ix.long())
            off.append(torch.stack([cx - ix, cy - iy], 1))
            size.append(torch.stack([bw, bh], 1))
        cat = (lambda v, n: torch.cat(v) if v else torch.zeros((0, *n), device=device))
        return heat, {"index": cat(idx, ()).long(), "offset": cat(off, (2,)), "size": cat(size, (2,))}

    def loss(self, images: torch.Tensor, targets: list[Target]) -> dict[str, torch.Tensor]:
        """`loss` (the weighted sum) and its parts `loss_heatmap`, `loss_size`, `loss_offset`."""
        heat_logits, reg = self(images)
        h, w = heat_logits.shape[-2:]
        heat, obj = self.encode(targets, h, w)
        n = max(int(obj["index"].numel()), 1)
        l_heat = focal_loss(heat_logits.float(), heat) / n
        flat = reg.float().permute(0, 2, 3, 1).reshape(-1, 4)[obj["index"]]
        l_off = F.l1_loss(flat[:, :2], obj["offset"], reduction="sum") / n
        l_size = F.l1_loss(flat[:, 2:], obj["size"], reduction="sum") / n
        wh, ws, wo = self.weights
        return {"loss": wh * l_heat + ws * l_size + wo * l_off,
                "loss_heatmap": l_heat.detach(), "loss_size": l_size.detach(), "loss_offset": l_off.detach()}

    # -- inference ------------------------------------------------------------------------------

    def decode(self, heat_logits: torch.Tensor, reg: torch.Tensor, image_size: tuple[int, int]) -> tuple[
            torch.Tensor, torch.Tensor, torch.Tensor]:
        """(boxes (B, k, 4) [x1, y1, x2, y2] in input pixels, scores (B, k), labels (B, k)), best
        first; k = max_detections. Traceable: max-pool peaks and top-k, no data-dependent shapes."""
        b, c, h, w = heat_logits.shape
        heat = torch.sigmoid(heat_logits)
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
        k = min(self.max_detections, c * h * w)
        scores, inds = peaks.reshape(b, -1).topk(k)
        labels = torch.div(inds, h * w, rounding_mode="floor")
        pix = inds - labels * (h * w)
        ys = torch.div(pix, w, rounding_mode="floor")
        xs = pix - ys * w
        r = reg.reshape(b, 4, h * w).gather(2, pix[:, None, :].expand(b, 4, k))  # (B, 4, k)
        cx = (xs.to(r.dtype) + r[:, 0]) * self.stride
        cy = (ys.to(r.dtype) + r[:, 1]) * self.stride
        bw = r[:, 2].clamp(min=0) * self.stride
        bh = r[:, 3].clamp(min=0) * self.stride
        ih, iw = image_size
        boxes = torch.stack([(cx - bw / 2).clamp(0, iw), (cy - bh / 2).clamp(0, ih),
                             (cx + bw / 2).clamp(0, iw), (cy + bh / 2).clamp(0, ih)], dim=2)
        return boxes, scores, labels

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[Target]:
        """Per image: `boxes` (k, 4) in input pixels, `scores` (k,), `labels` (k,)."""
        heat, reg = self(images)
        boxes, scores, labels = self.decode(heat.float(), reg.float(), tuple(images.shape[-2:]))
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
