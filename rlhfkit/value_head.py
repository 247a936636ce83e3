"""Moved to `rlhfkit.models.value_head` (the reference copy to `rlhfkit.models.reference`, the tied-embedding
gradient to `rlhfkit.models.speed`); these names stay for old imports."""

from rlhfkit.models.reference import frozen_copy as create_reference_model
from rlhfkit.models.speed import sparse_tied_embedding_grad
from rlhfkit.models.value_head import VALUE_HEAD_FILE, ModelWithValueHead, ValueHead, hidden_size, is_peft_model

__all__ = ["VALUE_HEAD_FILE", "ModelWithValueHead", "ValueHead", "create_reference_model", "hidden_size",
           "is_peft_model", "sparse_tied_embedding_grad"]
