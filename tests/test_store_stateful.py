"""Each store against a plain row-list model under random save/append/load sequences.

The model lives in :mod:`psyrun.store.testing`, for third-party stores to reuse.
"""

from __future__ import annotations

import os

import pytest

from psyrun.store import H5Store, NpzStore, PickleStore, ZarrStore
from psyrun.store.testing import store_model_test

# A few dozen sequences per store by default; the "thorough" profile digs deeper.
_EXAMPLES = 400 if os.environ.get("PSYRUN_HYPOTHESIS_PROFILE") == "thorough" else 30

TestPickleStoreModel = store_model_test(PickleStore, max_examples=_EXAMPLES)
TestNpzStoreModel = store_model_test(NpzStore, max_examples=_EXAMPLES)
TestH5StoreModel = store_model_test(H5Store, max_examples=_EXAMPLES)
TestZarrStoreModel = store_model_test(ZarrStore, max_examples=_EXAMPLES)

pytestmark = pytest.mark.filterwarnings("error")
