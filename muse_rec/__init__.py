"""muse_rec: MUSE and its baselines for lifelong user-interest CTR modelling on TorchRec + FBGEMM.

Importing the package first checks that torch, FBGEMM and TorchRec are a matching set
(`muse_rec.env.check_stack`): a mismatch otherwise surfaces later as an undefined-symbol
crash deep inside `fbgemm_gpu`. Set ``MUSE_REC_SKIP_VERSION_CHECK=1`` to bypass it.
"""
from muse_rec.env import check_stack as _check_stack

_check_stack()

__version__ = "0.1.0"
