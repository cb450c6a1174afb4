"""Lab checks: each compares a learner's function or class with the package's reference, and
on failure names the likely mistake.

Hand-written (not generated from a chapter). One engine (``engine.py``: cases, comparisons,
diffs, known mistakes and their diagnosis, calling the learner's code) and one module per lab:

======================  =============================================================
``lab01_attention``     ``check_attention``, ``check_causal_mask``, ``check_padding_mask``
``lab02_multihead``     ``check_split_heads``, ``check_merge_heads``, ``check_multi_head_attention``
``lab03_layers``        ``check_feed_forward``, ``check_sublayer_connection``,
                        ``check_encoder_layer``, ``check_decoder_layer``
``lab04_decoding``      ``check_greedy_decode``, ``check_sequence_log_prob``,
                        ``check_top_candidates``, ``check_beam_search`` (on the table models
                        of ``tables``, whose answers are known)
``lab05_training``      ``check_flops_per_token``, ``check_train_step``, ``check_lr_schedule``,
                        ``check_resume``
``lab06_tokenization``  ``check_pair_counts``, ``check_merge_pair``, ``check_train_merges``,
                        ``check_encode``, ``check_decode``
``lab07_modern``        ``check_rms_norm``, ``check_swiglu``, ``check_rotary``,
                        ``check_grouped_query_attention``, ``check_modern_attention``
======================  =============================================================

Use them as ``from transformer_lib import checks; checks.check_attention(my_attention)``. In a
notebook, a failed check shows its message first and, of the traceback, only the line of the cell
that called it (``engine.show_in_notebook``).
"""

from transformer_lib.checks.engine import install_notebook_display
from transformer_lib.checks.lab01_attention import (
    check_attention,
    check_causal_mask,
    check_padding_mask,
)
from transformer_lib.checks.lab02_multihead import (
    check_merge_heads,
    check_multi_head_attention,
    check_split_heads,
)
from transformer_lib.checks.lab03_layers import (
    check_decoder_layer,
    check_encoder_layer,
    check_feed_forward,
    check_sublayer_connection,
)
from transformer_lib.checks.lab04_decoding import (
    check_beam_search,
    check_greedy_decode,
    check_sequence_log_prob,
    check_top_candidates,
)
from transformer_lib.checks.lab05_training import (
    check_flops_per_token,
    check_lr_schedule,
    check_resume,
    check_train_step,
)
from transformer_lib.checks.lab06_tokenization import (
    check_decode,
    check_encode,
    check_merge_pair,
    check_pair_counts,
    check_train_merges,
)
from transformer_lib.checks.lab07_modern import (
    check_grouped_query_attention,
    check_modern_attention,
    check_rms_norm,
    check_rotary,
    check_swiglu,
)

install_notebook_display()

__all__ = [
    "check_attention",
    "check_causal_mask",
    "check_padding_mask",
    "check_split_heads",
    "check_merge_heads",
    "check_multi_head_attention",
    "check_feed_forward",
    "check_sublayer_connection",
    "check_encoder_layer",
    "check_decoder_layer",
    "check_greedy_decode",
    "check_sequence_log_prob",
    "check_top_candidates",
    "check_beam_search",
    "check_flops_per_token",
    "check_train_step",
    "check_lr_schedule",
    "check_resume",
    "check_pair_counts",
    "check_merge_pair",
    "check_train_merges",
    "check_encode",
    "check_decode",
    "check_rms_norm",
    "check_swiglu",
    "check_rotary",
    "check_grouped_query_attention",
    "check_modern_attention",
]
