"""Every GGUF key and tensor name this package reads or writes, in one place (docs/FORMAT.md)."""

ARCH_KEY = "general.architecture"
ALIGNMENT_KEY = "general.alignment"
SPLIT_COUNT_KEY = "split.count"
FILE_TYPE_KEY = "general.file_type"

TOKEN_EMBD = "token_embd.weight"
OUTPUT = "output.weight"

FORMAT_VERSION = 1  # files whose rows are RVQ-coded
TRELLIS_FORMAT_VERSION = 2  # files whose rows are trellis-coded (carvq.quantizer)
PREDICTION_FORMAT_VERSION = 3  # trellis files with rows predicted from other rows
QUANTIZERS = ("rvq", "trellis")
KEY_PREFIX = "carvq."
TENSOR_PREFIX = "carvq_"
ACTIVATIONS = ("relu",)

KEY_VERSION = "carvq.version"
KEY_VOCAB_SIZE = "carvq.vocab_size"
KEY_EMBEDDING_LENGTH = "carvq.embedding_length"
KEY_SUBVECTOR_DIM = "carvq.subvector_dim"
KEY_CODEBOOK_BITS = "carvq.codebook_bits"
KEY_LEVELS = "carvq.levels"
KEY_GROUP_LAYOUT = "carvq.group_layout"
KEY_GROUP_SIZE = "carvq.group_size"
KEY_QUANTIZER = "carvq.quantizer"
KEY_TRELLIS_STATE_BITS = "carvq.trellis.state_bits"
KEY_TRELLIS_STEP_BITS = "carvq.trellis.step_bits"
KEY_TRELLIS_STEP_DIM = "carvq.trellis.step_dim"
KEY_TRELLIS_GROUPS = "carvq.trellis.groups"
KEY_PREDICTION_ROWS = "carvq.prediction.rows"
KEY_PREDICTION_SCALE_STEP = "carvq.prediction.scale_step"
KEY_TABLE_DIM = "carvq.adaptor.table_dim"
KEY_HIDDEN_DIMS = "carvq.adaptor.hidden_dims"
KEY_ACTIVATION = "carvq.adaptor.activation"
KEY_NORM_EPS = "carvq.adaptor.norm_epsilon"
KEY_CORRECTION_ROWS = "carvq.correction_rows"
KEY_PRESET = "carvq.preset"

TENSOR_CODES = "carvq_codes"
TENSOR_CODEBOOKS = "carvq_codebooks"
TENSOR_TRELLIS_CODES = "carvq_trellis_codes"
TENSOR_TRELLIS_TABLES = "carvq_trellis_tables"
TENSOR_TRELLIS_COLUMNS = "carvq_trellis_columns"
TENSOR_PRED_MAP = "carvq_pred_map"
TENSOR_PRED_REFS = "carvq_pred_refs"
TENSOR_PRED_COLUMNS = "carvq_pred_columns"
TENSOR_SIGMA0 = "carvq_sigma0"
TENSOR_CORR_IDS = "carvq_corr_ids"
TENSOR_CORR_ROWS = "carvq_corr_rows"


def mlp_weight_name(i: int) -> str:
    """Tensor name of linear layer i's weight."""
    return f"carvq_mlp.{i}.weight"


def mlp_bias_name(i: int) -> str:
    """Tensor name of linear layer i's bias."""
    return f"carvq_mlp.{i}.bias"


def norm_weight_name(i: int) -> str:
    """Tensor name of the LayerNorm weight after linear layer i."""
    return f"carvq_norm.{i}.weight"


def norm_bias_name(i: int) -> str:
    """Tensor name of the LayerNorm bias after linear layer i."""
    return f"carvq_norm.{i}.bias"
