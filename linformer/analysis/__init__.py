"""The paper's analyses: training curves (Figure 3, `curves`), fine-tuning results beside the
paper's (Table 2, `table2`), inference time and memory (Table 3: `table3` measures,
`table3_report` compares with the paper, tabulates and plots) and the singular value spectrum of
attention's context matrices (Figure 1, `spectrum`)."""
