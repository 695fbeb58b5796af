"""The paper's experiments, run from the repository root as `.venv/bin/python -m tools.experiments.NAME`:
expert_zoo and meta_benchmark (Table 1, model selection; finetune is the experts' training recipe),
paper_figures (the claims about the embedding) and toy_tasks (the toy setting of supplementary 5), and
build_default_index, which builds the shipped index from default_index.csv and the benchmark's experts."""
