"""Point-cloud grouping operators in plain torch (no CUDA extensions): farthest point sampling, kNN grouping and
inverse-distance interpolation, as used by Point-BERT / Point-MAE (Yu et al., CVPR 2022; Pang et al., ECCV 2022).

Everything is deterministic: farthest point sampling always starts at point 0 (as the pointnet2 CUDA kernel does),
so the same cloud in the same point order always gives the same patches.
"""
import torch


def farthest_point_sample(xyz: torch.Tensor, num: int) -> torch.Tensor:
    """Indices (B, num) of `num` points chosen greedily, each the farthest from those already chosen.

    xyz: (B, N, 3). The first index is 0 for every cloud.
    """
    B, N, _ = xyz.shape
    if num > N:
        raise ValueError(f"cannot sample {num} centres from {N} points")
    idx = torch.zeros(B, num, dtype=torch.long, device=xyz.device)
    dist = torch.full((B, N), float("inf"), dtype=xyz.dtype, device=xyz.device)
    farthest = torch.zeros(B, dtype=torch.long, device=xyz.device)
    batch = torch.arange(B, device=xyz.device)
    for i in range(num):
        idx[:, i] = farthest
        centre = xyz[batch, farthest].unsqueeze(1)                         # (B, 1, 3)
        dist = torch.minimum(dist, ((xyz - centre) ** 2).sum(-1))
        farthest = dist.argmax(-1)
    return idx


def gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, C) indexed by idx (B, ...) along N -> (B, ..., C)."""
    B = x.shape[0]
    flat = idx.reshape(B, -1)
    out = torch.gather(x, 1, flat.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return out.reshape(*idx.shape, x.shape[-1])


def knn(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, M, k) of the k points of ref (B, N, 3) nearest to each query point (B, M, 3), nearest first."""
    if k > ref.shape[1]:
        raise ValueError(f"cannot take {k} neighbours from {ref.shape[1]} points")
    d = torch.cdist(query.float(), ref.float())
    return d.topk(k, dim=-1, largest=False, sorted=True).indices


def group_points(xyz: torch.Tensor, num_group: int, group_size: int):
    """Split clouds into `num_group` local patches of `group_size` points around FPS centres.

    Returns (neighborhood (B, G, K, 3) relative to the patch centre, centre (B, G, 3)).
    """
    centre = gather_points(xyz, farthest_point_sample(xyz, num_group))
    idx = knn(centre, xyz, group_size)
    neighborhood = gather_points(xyz, idx) - centre.unsqueeze(2)
    return neighborhood, centre


def three_nn_interpolate(xyz_dst: torch.Tensor, xyz_src: torch.Tensor, feat_src: torch.Tensor) -> torch.Tensor:
    """Features of xyz_src points (B, M, 3; feat_src (B, M, C)) interpolated to xyz_dst (B, N, 3).

    Inverse squared-distance weights over the three nearest source points (PointNet++ feature propagation).
    """
    k = min(3, xyz_src.shape[1])
    d = torch.cdist(xyz_dst.float(), xyz_src.float()) ** 2
    dist, idx = d.topk(k, dim=-1, largest=False, sorted=True)
    weight = 1.0 / (dist + 1e-8)
    weight = (weight / weight.sum(-1, keepdim=True)).to(feat_src.dtype)
    return (gather_points(feat_src, idx) * weight.unsqueeze(-1)).sum(2)
