"""Ray actors, one role per module (installed as ``crpo_ray.actors``).

Not yet implemented: the rollout workers (``hf`` and ``vllm`` engines), the scorer
pool, the FSDP2 learner on Ray Train and the experience fleet arrive with the
distributed-pipeline issue. Everything they call (config, data, prompts, stage
segmentation, rewards, the CRPO loss, metrics) is in ``crpo_ray`` and imports
without Ray.
"""
