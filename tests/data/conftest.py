import os
from pathlib import Path

import pytest


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
