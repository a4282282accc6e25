"""RevexSpec: its three attributes go straight into a real GRPOTrainer (TRL 1.16), whose
rewards come from the environment's get_reward through the revex runtime."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import patch

import pytest

from revex import Runtime
from revex.errors import ConfigError
from revex.trainer import RevexSpec, builtin_tasks


def test_spec_shapes_and_bad_input(tmp_path: Path) -> None:
    with Runtime(state_dir=tmp_path / "s", policy="training", audit=None) as rt:
        spec = RevexSpec("builtin", runtime=rt, num_tasks=3)
        row = spec.train_dataset[0]
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]
        assert row["entry_point"] == builtin_tasks()[0].entry_point and row["tests"]
        assert len(spec.train_dataset) == 3 and spec.reward_funcs == []
        env = spec.environment_factory()
        env.reset(**row)
        assert env.get_reward() == 0.0  # nothing written yet
        env.write_file("solution.py", builtin_tasks()[0].prompt + builtin_tasks()[0].reference)
        assert env.get_reward() == 1.0
        assert spec.close() == 1
    with pytest.raises(ConfigError, match="unknown task source"):
        RevexSpec("nope")
    with pytest.raises(ConfigError, match="num_tasks"):
        RevexSpec("builtin", num_tasks=0)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning",
                            "ignore::DeprecationWarning")
def test_grpo_trainer_takes_the_spec_as_is(tmp_path: Path) -> None:
    from trl import GRPOConfig, GRPOTrainer

    from tests.trainer.scripted_tools import scripted_generate, tool_model

    task = builtin_tasks()[0]
    model, tok = tool_model(tmp_path / "m")
    solution = task.prompt + (task.reference or "")
    fake = scripted_generate(tok, [("write_file", {"path": "solution.py", "content": solution}),
                                   ("run_tests", {"code": solution})])
    with RevexSpec([task], num_tasks=1) as spec:
        dataset = spec.train_dataset.select([0, 0])
        args = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False,
                          gradient_checkpointing=False, report_to="none", num_generations=2,
                          per_device_train_batch_size=2, max_completion_length=1024,
                          max_steps=1, logging_steps=1, save_strategy="no", disable_tqdm=True)
        trainer = GRPOTrainer(model=model, args=args, processing_class=tok,
                              train_dataset=dataset,
                              environment_factory=spec.environment_factory,
                              reward_funcs=spec.reward_funcs)
        with patch.object(trainer.model, "generate", side_effect=fake):
            trainer.train()
        logs = trainer.state.log_history[0]
        assert logs["rewards/RevexEnv/mean"] == 1.0
        assert logs["tools/call_frequency"] == 2 and logs["tools/failure_frequency"] == 0
        assert spec.environment_factory.end_all() == 2
        assert {e.status for e in spec.runtime.episodes()} == {"rolled_back"}
