"""Orbax checkpoints of the train state together with the data-iterator state and extra JSON state.

One checkpoint = ``{"state": TrainState arrays, "meta": JSON}`` where ``meta`` holds the batcher's
``state_dict()`` and anything the algorithm needs to resume (ROPO's round, APO's phase). Restoring
places every array with the target shardings, so a run resumes on the same or a different mesh.
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxpref import paths


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = paths.absolute(directory)  # a local path made absolute; gs:// kept (orbax writes it)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                                 create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, *, force: bool = True) -> None:
        self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             meta=ocp.args.JsonSave(meta)), force=force)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """Restore ``(state, meta, step)``; ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with
        ``sharding`` set (see :func:`abstract_with_shardings`)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                 meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"]), step

    def delete(self, step: int) -> None:
        """Remove the checkpoint of ``step`` (e.g. one that holds diverged params)."""
        self.manager.wait_until_finished()
        self.manager.delete(int(step))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` pytree of ``tree`` carrying ``shardings`` (the restore target)."""
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
