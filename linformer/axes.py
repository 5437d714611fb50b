"""The mesh's axes, and the logical axis names of the model's parameters.

Every parameter is created with one name per dimension (or None); `config.mesh.rules` maps names
onto the mesh axes of `linformer.training.partitioning`, so a layout is changed in the config
without touching the model.
"""

VOCAB = "vocab"  # token embedding rows, MLM output bias
EMBED = "embed"  # the hidden (model) width
EMBED_OUT = "embed_out"  # the output width of a square hidden -> hidden head layer
MLP = "mlp"  # the feed-forward width
HEADS = "heads"  # attention heads
KV = "kv"  # the per-head width
SEQ = "seq"  # sequence positions n (Linformer's E and F columns)
SEQ_PROJ = "seq_proj"  # projected positions k (E and F rows)
CONV_TAP = "conv_tap"  # taps of a convolutional sequence projection

# The device mesh (linformer.training.partitioning): data parallelism, ZeRO-3 and tensor
# parallelism; config.mesh gives their sizes.
MESH_AXES = ("data", "fsdp", "tensor")

ALL = (VOCAB, EMBED, EMBED_OUT, MLP, HEADS, KV, SEQ, SEQ_PROJ, CONV_TAP)

# The default layout: Megatron-style tensor parallelism over heads, MLP and vocabulary, ZeRO-3
# (fsdp) over the hidden width; the rest replicated (small, or it would cut the head width).
DEFAULT_RULES = {VOCAB: "tensor", EMBED: "fsdp", MLP: "tensor", HEADS: "tensor"}
