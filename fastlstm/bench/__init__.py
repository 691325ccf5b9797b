"""The benchmark harness behind ``fastlstm bench``: shapes, providers, timing, checks, reports.

``shapes`` names the problems and grids, ``providers`` builds each competing implementation
on one shared set of weights and inputs (a Triton kernel design is a parameter of the
module, ``design=``), ``runner`` checks every provider against ``torch.nn.LSTM`` before
timing it side by side (``timing``), ``report`` writes the table, JSON, CSV, Markdown and
chart, ``env`` records the machine, and ``precompile`` compiles a grid's Triton kernels in
parallel first. It is the one front end: the GPU check (``benchmarks/gpu_check.sh``) runs
``fastlstm bench``, and the design table (``benchmarks/design_table.py``) reads its results.
"""
