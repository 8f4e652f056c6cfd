"""GroupNormStatistics: pooled whole-input statistics for windowed runs, and the Separator's use of them."""
import numpy as np
import pytest
import torch
from torchmetrics.functional.audio import permutation_invariant_training, scale_invariant_signal_noise_ratio

from ssmzoo.tasks.separation import Separator
from ssmzoo.tasks.window_stats import GroupNormStatistics


class NormSplitter(torch.nn.Module):
    """(B, T) -> (B, 2, T): samples beyond one standard deviation of the whole input (a GroupNorm's statistics) and
    the rest. The two add up to the input, so the Separator's gain fit is exact and any difference between windows
    and the whole comes from the statistics, as in DPMamba."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.GroupNorm(1, 1)

    def forward(self, x):
        loud = self.norm(x[:, None])[:, 0].abs() > 1
        return torch.stack([x * loud, x * ~loud], 1)


def _drifting(seconds: float, rate: int = 8000) -> torch.Tensor:
    """A signal whose mean and level drift, so that windows have different statistics from the whole."""
    t = np.arange(int(seconds * rate)) / rate
    g = np.random.default_rng(0)
    return torch.from_numpy((0.2 * t + (1 + t) * g.standard_normal(t.size)).astype(np.float32))


def test_pooled_statistics_reproduce_the_whole_input_norm():
    model = NormSplitter()
    x = _drifting(3.0)[None]
    whole = model(x)
    stats = GroupNormStatistics(model)
    with stats.record():
        for piece in x.tensor_split(3, dim=1):
            model(piece)
    with stats.frozen():
        window = model(x[:, 8000:16000])
    assert torch.equal(window, whole[..., 8000:16000])
    assert not torch.equal(model(x[:, 8000:16000]), whole[..., 8000:16000])  # its own statistics differ
    assert "forward" not in vars(model.norm)  # the class's forward is back


def test_statistics_need_a_first_pass_and_batch_one():
    model = NormSplitter()
    stats = GroupNormStatistics(model)
    with pytest.raises(RuntimeError, match="run record\\(\\) first"), stats.frozen():
        pass
    with pytest.raises(ValueError, match="batch size 1"), stats.record():
        model(torch.randn(2, 100))
    assert not GroupNormStatistics(torch.nn.Linear(2, 2))  # nothing to pool: the Separator skips the first pass


@pytest.mark.parametrize("file_statistics, exact", [(True, True), (False, False)])
def test_windows_normalise_with_the_file_statistics(file_statistics, exact):
    x = _drifting(12.0)
    whole = Separator(NormSplitter(), chunk_seconds=60).separate(x)
    windowed = Separator(NormSplitter(), chunk_seconds=4.0, overlap_seconds=2.0, fade_seconds=0.5,
                         lookahead_seconds=0.5, file_statistics=file_statistics).separate(x)
    agreement, _ = permutation_invariant_training(windowed[None], whole[None], scale_invariant_signal_noise_ratio,
                                                  eval_func="max")
    assert (agreement.item() > 60) == exact, agreement
