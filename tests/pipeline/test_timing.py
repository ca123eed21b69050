"""plugin.utils.timing.peak_memory: the peak-memory count that the benchmark and compare_official share."""
import pytest
import torch

from plugin.utils.timing import peak_memory


def test_off_cuda_the_count_stays_none():
    with peak_memory("cpu") as peak:
        torch.ones(1000)
    assert peak == {"bytes": None}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_count_covers_what_the_block_allocated():
    with peak_memory("cuda") as peak:
        x = torch.ones(2 ** 20, device="cuda")  # 4 MiB
    assert peak["bytes"] >= x.numel() * 4
