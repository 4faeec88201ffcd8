"""4M input/target masking: Dirichlet token budgets (alphas), image masks, T5 span masking, transfer masking."""
