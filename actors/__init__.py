"""Ray roles, one per module (installed as ``crpo_ray.actors``).

* ``rollout``: ``RolloutWorker`` (engine ``hf`` or ``vllm``), generates Arrow rollouts
* ``scorer``: ``Scorer``, rollouts -> scored batches
* ``fleet``: ``ExperienceFleet``, owns both pools, hands each learner rank its share
* ``learner``: FSDP2 policy and the CRPO update step
* ``train_loop``: the per-rank training loop run by Ray Train
* ``checkpoint``: checkpoint layout
* ``driver``: input checks, Ray start-up, wiring (``crpo-ray train`` / ``eval``)

Each role is a plain class; the Ray actor is made by one line at the bottom of its module.
"""
