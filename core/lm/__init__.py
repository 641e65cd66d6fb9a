"""Everything that touches the model: loading it offline (`models`), the attention functions
registered with transformers (`capture` records statistics, `pruned` attends to kept sets), the
statistics themselves (`stats`, `kernels`) and the forward passes both stages run (`decode`: prefill
and the one greedy loop). Importing this package is cheap; its modules import torch."""

DEFAULT_MODEL = "smollm2-135m"  # the embedded SmolLM2-135M-Instruct
