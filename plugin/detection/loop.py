"""What the detection task adds to mmengine's test loop: a collector of each image's predictions (for agreement with
the float model), the calibration forward (`run_test_step`) and the rank-0 broadcast before a sharded evaluation."""
import numpy as np


class PredictionCollector:
    """An evaluator member beside CocoMetric that keeps each image's predictions (boxes, scores, labels, masks as
    RLE) and returns no metric. `collected` holds them after the evaluation, gathered on rank 0 (None elsewhere)."""

    def __init__(self):
        self.results, self.collected, self.dataset_meta = [], None, None

    def process(self, data_batch, data_samples):
        from pycocotools import mask as mask_utils
        for sample in data_samples:
            pred = sample["pred_instances"]
            height, width = sample.get("ori_shape", (0, 0))[:2]  # CocoMetric needs it too; masks carry their own
            kept = {"img_id": sample["img_id"], "height": int(height), "width": int(width)}
            for key in ("bboxes", "scores", "labels", "mask_scores"):
                if key in pred:
                    kept[key] = pred[key].detach().cpu().numpy()
            if "masks" in pred:
                masks = pred["masks"]
                if hasattr(masks, "detach"):
                    masks = masks.detach().cpu().numpy().astype(np.uint8)
                    masks = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
                kept["masks"] = list(masks)
            self.results.append(kept)

    def evaluate(self, size):
        from mmengine.dist import collect_results
        self.collected = collect_results(self.results, size, "cpu")
        self.results = []
        return {}


def attach_collector(evaluator):
    """The evaluator's PredictionCollector, added on first use (the evaluator lives as long as the runner)."""
    collector = next((m for m in evaluator.metrics if isinstance(m, PredictionCollector)), None)
    if collector is None:
        collector = PredictionCollector()
        evaluator.metrics.append(collector)
    collector.collected = None
    return collector


def run_test_step(model, batch):
    """One calibration forward: data preprocessor + inference. Returns the predicted boxes and scores of each image
    (differentiable where the forward runs with gradients: PTQ4ViT's Hessian search back-propagates from them); the
    predictions are removed from the data samples (the batch is reused for every calibration pass, and kept masks
    would pile up in it)."""
    samples = model.test_step(batch)
    outputs = []
    for sample in samples:
        if "pred_instances" in sample:
            outputs += [sample.pred_instances.bboxes, sample.pred_instances.scores]
            del sample.pred_instances
    return outputs


def broadcast_from_rank0(model):
    """Under torch.distributed, give every rank rank 0's parameters and buffers (same module structure required)."""
    from mmengine.dist import broadcast, broadcast_object_list, get_world_size
    if get_world_size() <= 1:
        return
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    names = [n for n, _ in tensors]
    reference = [names]
    broadcast_object_list(reference, src=0)
    if reference[0] != names:
        raise RuntimeError("the model differs between ranks (quantization is not deterministic across ranks)")
    for _, tensor in tensors:
        broadcast(tensor.data, src=0)


__all__ = ["PredictionCollector", "attach_collector", "broadcast_from_rank0", "run_test_step"]
