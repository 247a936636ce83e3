"""A FLAN-T5 detox-notebook-style loop through rlhfkit.compat.trl, changing only the imports."""

import math

import pytest
import torch

from rlhfkit.models import load_tokenizer, resolve

PROMPTS = [
    "Summarize the following conversation. The neighbour plays loud music every night.",
    "Summarize the following conversation. Could you write a short reply to my landlord?",
    "Summarize the following conversation. Good morning, how are you? I am fine, thanks.",
    "Summarize the following conversation. The referee made a bad call in the game.",
    "Summarize the following conversation. We should talk about it calmly.",
    "Summarize the following conversation. Thank you so much for your help today!",
    "Summarize the following conversation. I think you are wrong about this.",
    "Summarize the following conversation. What a terrible, stupid idea.",
] * 4


@pytest.fixture(scope="module")
def classifier_pipe(tmp_path_factory):
    """A tiny hate-speech-style classifier (random tiny BERT, labels nothate/hate) as a pipeline."""
    from transformers import AutoTokenizer, BertForSequenceClassification, pipeline

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("classifier")
    model = BertForSequenceClassification.from_pretrained(
        resolve("tiny-bert"), num_labels=2, id2label={0: "nothate", 1: "hate"}, label2id={"nothate": 0, "hate": 1})
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve("tiny-bert")).save_pretrained(folder)
    return pipeline("text-classification", model=str(folder), tokenizer=str(folder), device="cpu")


def test_detox_notebook_loop_runs_unchanged(classifier_pipe):
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    # ---- only these imports differ from the notebook
    from rlhfkit.compat.trl import (
        AutoModelForSeq2SeqLMWithValueHead, LengthSampler, PPOConfig, PPOTrainer, create_reference_model,
    )

    torch.manual_seed(0)
    tokenizer = load_tokenizer("tiny-t5")
    base = AutoModelForSeq2SeqLM.from_pretrained(resolve("tiny-t5"), dtype=torch.bfloat16)
    lora_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q", "v"], lora_dropout=0.05, bias="none",
                             task_type=TaskType.SEQ_2_SEQ_LM)
    peft_model = get_peft_model(base, lora_config)

    def tokenize(sample):
        sample["input_ids"] = tokenizer.encode(sample["query"])
        return sample

    dataset = Dataset.from_dict({"query": PROMPTS}).map(tokenize)
    dataset.set_format(type="torch")

    ppo_model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(peft_model, torch_dtype=torch.bfloat16, is_trainable=True)
    ref_model = create_reference_model(ppo_model)
    assert all(not p.requires_grad for p in ref_model.parameters())
    print(ppo_model.v_head)

    learning_rate, max_ppo_epochs, mini_batch_size, batch_size = 1.41e-5, 1, 4, 16
    config = PPOConfig(model_name="tiny-t5", learning_rate=learning_rate, ppo_epochs=max_ppo_epochs,
                       mini_batch_size=mini_batch_size, batch_size=batch_size)

    def collator(data):
        return dict((key, [d[key] for d in data]) for key in data[0])

    ppo_trainer = PPOTrainer(config=config, model=ppo_model, ref_model=ref_model, tokenizer=tokenizer,
                             dataset=dataset, data_collator=collator)

    output_min_length, output_max_length = 5, 9
    output_length_sampler = LengthSampler(output_min_length, output_max_length)
    generation_kwargs = {"min_length": 5, "top_k": 0.0, "top_p": 1.0, "do_sample": True}
    reward_kwargs = {"top_k": None, "function_to_apply": "none", "batch_size": 16}
    not_hate_index = 0
    lora_before = {n: p.detach().clone() for n, p in ppo_model.named_parameters() if "lora_B" in n}

    max_ppo_steps = 2
    for step, batch in enumerate(ppo_trainer.dataloader):
        if step >= max_ppo_steps:
            break
        prompt_tensor_list = batch["input_ids"]
        summary_tensors = []
        for prompt_tensor in prompt_tensor_list:
            max_new_tokens = output_length_sampler()
            generation_kwargs["max_new_tokens"] = max_new_tokens
            summary = ppo_trainer.generate(prompt_tensor, **generation_kwargs)
            summary_tensors.append(summary.squeeze()[-max_new_tokens:])
        batch["response"] = [tokenizer.decode(r.squeeze()) for r in summary_tensors]
        query_response_pairs = [q + r for q, r in zip(batch["query"], batch["response"])]
        rewards = classifier_pipe(query_response_pairs, **reward_kwargs)
        reward_tensors = [torch.tensor(reward[not_hate_index]["score"]) for reward in rewards]
        stats = ppo_trainer.step(prompt_tensor_list, summary_tensors, reward_tensors)
        ppo_trainer.log_stats(stats, batch, reward_tensors)
        print(f'objective/kl: {stats["objective/kl"]}')
        print(f'ppo/returns/mean: {stats["ppo/returns/mean"]}')
        print(f'ppo/policy/advantages_mean: {stats["ppo/policy/advantages_mean"]}')
        print("-".join("" for x in range(100)))

    assert ppo_trainer.current_step == 2
    for key in ("objective/kl", "ppo/returns/mean", "ppo/policy/advantages_mean"):
        assert math.isfinite(stats[key])
    changed = [n for n, p in ppo_model.named_parameters() if "lora_B" in n and not torch.equal(p, lora_before[n])]
    assert changed, "the LoRA adapter did not train"
    assert len(ppo_trainer.trainer.history) == 2


def test_seq2seq_generate_returns_decoder_ids_with_start_token_and_step_strips_it():
    from transformers import AutoModelForSeq2SeqLM

    from rlhfkit.compat.trl import AutoModelForSeq2SeqLMWithValueHead, PPOConfig, PPOTrainer

    tokenizer = load_tokenizer("tiny-t5")
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(resolve("tiny-t5")))
    trainer = PPOTrainer(config=PPOConfig(batch_size=4, mini_batch_size=2), model=model, tokenizer=tokenizer)
    query = torch.tensor(tokenizer.encode("Good morning, how are you?"))
    out = trainer.generate(query, max_new_tokens=6, min_length=3, do_sample=True, top_k=0.0)
    assert out.dim() == 2 and out[0, 0].item() == model.config.decoder_start_token_id
    assert trainer._response_ids(out.squeeze()) == out.squeeze()[1:].tolist()[: len(trainer._response_ids(out.squeeze()))]
    batched = trainer.generate([query] * 5, batch_size=2, max_new_tokens=6, do_sample=True)
    assert len(batched) == 5 and all(r[0].item() == model.config.decoder_start_token_id for r in batched)


def test_causal_lora_batched_generate_and_step_share_weights():
    from rlhfkit.compat.trl import AutoModelForCausalLMWithValueHead, LengthSampler, PPOConfig, PPOTrainer
    from rlhfkit.models import load_policy

    policy = load_policy("tiny-gpt2", lora=True, verbose=False)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(policy.model)
    trainer = PPOTrainer(config=PPOConfig(batch_size=8, mini_batch_size=4, learning_rate=1e-3), model=model,
                         tokenizer=policy.tokenizer)
    assert trainer.ref_model is None  # LoRA: the reference is the policy with adapters disabled
    queries = [torch.tensor(policy.tokenizer.encode(t)) for t in ["Hello there", "The quick brown fox", "Good"] * 3][:8]
    responses = trainer.generate(queries, batch_size=3, return_prompt=False, length_sampler=LengthSampler(3, 6),
                                 do_sample=True, top_k=0.0, top_p=1.0)
    assert len(responses) == 8 and all(1 <= len(r) <= 5 for r in responses)
    with_prompt = trainer.generate(queries[:2], batch_size=2, max_new_tokens=3, do_sample=True)
    assert with_prompt[0][: len(queries[0])].tolist() == queries[0].tolist()
    stats = trainer.step(queries, responses, [torch.tensor(float(len(r))) for r in responses])
    assert math.isfinite(stats["objective/kl"]) and stats["ppo/policy/ratio"] > 0
