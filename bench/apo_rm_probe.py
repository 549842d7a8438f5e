"""How strong can the gold-reward task's reward model get? Held-out clean accuracy of the RM (SFT decoder +
fresh scalar head, human pairs only) against the number of pairs, epochs and learning rate, seed 0.

    python bench/apo_rm_probe.py [--out=results/apo_rm_probe.json]

Context for the APO table (BENCHMARKS.md): the RM of ``configs/apo_synthetic.py`` trains on 512 pairs for 4
epochs at lr 1e-3.
"""

import argparse
import json
import os
import tempfile
import time

from jaxpref.algorithms import reward_model as RMod
from jaxpref.configs_base import load_config_file
from jaxpref.eval import experiment as E

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SETTINGS = ((512, 4, 1e-3), (512, 12, 1e-3), (512, 8, 3e-3), (2048, 4, 1e-3), (2048, 8, 1e-3))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/apo_rm_probe.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = load_config_file(os.path.join(ROOT, "configs", "apo_synthetic.py"))
    cfg.task.num_pair_prompts = max(n for n, _, _ in SETTINGS)
    td = E.build_task_data(cfg, args.seed)
    model, base = RMod.base_reward_params(td.model, td.sft_params)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, epochs, lr in SETTINGS:
            c = cfg.copy_and_resolve_references()
            c.reward_model.train.num_epochs = float(epochs)
            c.reward_model.train.learning_rate = lr
            t0 = time.time()
            trainer = RMod.reward_trainer(c, os.path.join(tmp, f"{n}_{epochs}_{lr}"),
                                          RMod.weight_rows(list(td.train_rows)[:n], []), eval_rows=td.eval_rows,
                                          model_and_params=(model, base), progress=False)
            trainer.fit()
            acc = float(trainer.evaluate()["rewards/accuracies"])
            trainer.close()
            results.append({"pairs": n, "epochs": epochs, "lr": lr, "accuracy": acc, "seconds": time.time() - t0})
            print(json.dumps(results[-1]), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"seed": args.seed, "eval_pairs": len(td.eval_rows), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
