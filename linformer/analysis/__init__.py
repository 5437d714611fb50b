"""The paper's analyses: training curves (Figure 3), efficiency (Table 3), spectrum (Figure 1)."""
