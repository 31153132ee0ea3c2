"""How far int8 tables move a model's click probabilities, measured when `muse-rec export` quantizes.

Row-wise int8 moves each ID embedding by about 1/510 of its row's range. Where no discrete decision
reads an ID embedding, the logit moves smoothly and little (docs/serving.md: <= 7e-5 in logit at
random init). Where the GSU retrieves behaviours by ID-embedding scores (TWIN, SIM-soft, the ID-score
ablations), int8 rows can change WHICH behaviours it retrieves, and a trained model's probability
can then move by several hundredths (an outside check: 0.046 for TWIN after 20 steps on the demo).
No bound from the tables covers that, so the export measures it: the float and the int8 model
score the same requests, the first `users` users of the eval split with their own impressions as
candidates, through the Ranker's one-user path (`muse_rec.serving.ranker`). The figures go to the
manifest (``int8_check``) and a deviation above ``warn_above`` is a warning naming ``--float``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from muse_rec.data.prepared import PreparedData
from muse_rec.serving.inference import InferenceModel
from muse_rec.wording import count

# Users of the eval split the check scores (all their impressions): ~700 samples on Taobao-like data,
# a few seconds of eager forwards, enough to see a deviation that 1% of samples carry.
INT8_CHECK_USERS = 64
# Samples of the split's head searched for those users (a prefix: the release's test split is 23M).
_PREFIX = 1 << 16
# A hundredth of probability: ~100x what int8 rows move a model whose decisions do not read them.
INT8_WARN_DP = 0.01


@dataclass
class CheckRequests:
    """Raw user ids and, per user, the raw item ids of its impressions (the candidates)."""

    split: str
    users: List[int]
    candidates: List[np.ndarray]

    @property
    def samples(self) -> int:
        """Candidates over all requests (one sample each)."""
        return int(sum(c.size for c in self.candidates))


def check_requests(data: PreparedData, split: str, users: int = INT8_CHECK_USERS) -> CheckRequests:
    """The first ``users`` users of ``split`` (file order) and their impressions in its first 65,536."""
    data.require_split(split)
    n = min(data.num_samples(split), _PREFIX)
    user_keys = np.asarray(data.array(f"{split}/sample_user_keys.npy")[:n])
    item_keys = np.asarray(data.array(f"{split}/sample_item_keys.npy")[:n])
    _, first = np.unique(user_keys, return_index=True)
    chosen = user_keys[np.sort(first)[:users]]
    return CheckRequests(split, [int(u) for u in chosen], [item_keys[user_keys == u] for u in chosen])


def score_requests(model: InferenceModel, data: PreparedData, requests: CheckRequests, seq_len: int) -> np.ndarray:
    """``[samples]`` click probabilities of ``model`` (eager) for every request, in request order."""
    from muse_rec.serving.ranker import FloatScorer, Ranker  # the Ranker imports this package's export

    with Ranker(FloatScorer(model), data, requests.split, seq_len, max_workers=1) as ranker:
        scores = [ranker.score(u, c) for u, c in zip(requests.users, requests.candidates)]
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


def deviation_report(requests: CheckRequests, float_scores: np.ndarray, int8_scores: np.ndarray,
                     warn_above: Optional[float] = None) -> Dict[str, object]:
    """The manifest's ``int8_check``: how far the int8 model's probabilities are from the float one's
    (``warn_above``: default `INT8_WARN_DP`)."""
    warn_above = INT8_WARN_DP if warn_above is None else warn_above
    dp = np.abs(int8_scores.astype(np.float64) - float_scores.astype(np.float64))
    return {
        "split": requests.split, "users": len(requests.users), "samples": int(dp.size),
        "max_abs_dp": float(dp.max()) if dp.size else 0.0,
        "p99_abs_dp": float(np.quantile(dp, 0.99)) if dp.size else 0.0,
        "mean_abs_dp": float(dp.mean()) if dp.size else 0.0,
        "samples_above_warn": int((dp > warn_above).sum()), "warn_above": warn_above,
    }


def warning_text(report: Dict[str, object], method: str, retrieves_by_id: bool) -> str:
    """The export's warning when ``report``'s largest deviation is above its ``warn_above``."""
    why = (f"; {method}'s GSU retrieves behaviours by ID-embedding scores, and int8 rows change which ones"
           if retrieves_by_id else "")
    return (f"int8 tables move {method}'s click probabilities by up to {report['max_abs_dp']:.4f} "
            f"(p99 {report['p99_abs_dp']:.4f}; {report['samples_above_warn']:,} of "
            f"{count(report['samples'], 'sample')} of {count(report['users'], report['split'] + ' user')} above "
            f"{report['warn_above']}){why}: export with --float "
            "to serve what was trained")
