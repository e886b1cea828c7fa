"""ipywidgets views on mbt_core: `fusion_explorer`, `rollout_stepper`, and `static_export` (the kernel-free page)."""
