import os
from pathlib import Path

import pytest
import torch

# Without CUDA, the Triton kernels run on CPU tensors through Triton's interpreter: the same
# kernels and launch code as on a GPU. It must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def imdb_path() -> Path:
    """The IMDB archive or folder named by FASTLSTM_IMDB_PATH; skips the test without it."""
    value = os.environ.get("FASTLSTM_IMDB_PATH")
    if not value:
        pytest.skip("FASTLSTM_IMDB_PATH is not set")
    path = Path(value)
    if not path.exists():
        pytest.skip(f"FASTLSTM_IMDB_PATH={value} does not exist")
    return path
