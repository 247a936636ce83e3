"""rlhfkit: the whole RLHF loop on Hugging Face models.

SFT, human feedback collection, reward models (Bradley-Terry), PPO with a KL
leash, and before/after evaluation, for causal and seq2seq models, with or
without LoRA, on a laptop CPU or a GPU cluster.
"""

from rlhfkit.errors import UserError
from rlhfkit.runtime import quiet_torchao_import

quiet_torchao_import()  # before anything imports transformers (which imports torchao when installed)

__version__ = "0.1.0"
__all__ = ["UserError", "__version__"]
