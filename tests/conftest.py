import os

import pytest
import torch

# Without CUDA, the Triton kernels run on CPU tensors through Triton's interpreter: the same
# kernels and launch code as on a GPU. It must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
