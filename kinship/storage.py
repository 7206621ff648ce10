"""The artifact store's old address: every name code and tests import from ``kinship.storage`` still comes from
here, re-exported from the ``kinship.store`` package, which holds the store one concept per module (see its
docstring). New code imports from ``kinship.store``.

A test that monkeypatches a name here patches only this module's reference: the code that uses it looks it up in
its own ``kinship.store`` module, so such a patch targets that module (``kinship.store.transfer._tree_files``).
"""

from __future__ import annotations

# ``storage.shutil.disk_usage`` is patched by tests (a full disk): the module object is shared, so the patch reaches
# ``kinship.store.transfer.check_room``.
import shutil  # noqa: F401

# What ``kinship.storage`` imported from its helpers, and some callers import from here (``file_digest``).
from kinship.files import (  # noqa: F401
    NotRegularFile, file_digest, file_lock, open_regular, stream_digest, temp_sibling, unlink_quietly, write_atomic,
)
from kinship.shards import (  # noqa: F401
    SHARD_FOLDER, MemberEntry, PackedShard, ShardedManifest, ShardEntry, is_sharded, pack_shards, parse_manifest,
    refuse_file_folder_clash, unpack_shard,
)
from kinship.store import *  # noqa: F401,F403  (the public API, kinship.store.__all__)
from kinship.store.base import _BaseStore, _Cancel, _Cancelled, _json_bytes, _manifest_entries  # noqa: F401
from kinship.store.keys import (  # noqa: F401
    _BUCKET, _CONTROL, _child, _file_path, _key_problem, _parent, _redacted, _relative_key,
)
from kinship.store.local import _LOCAL_META_DIR  # noqa: F401
from kinship.store.local_files import (  # noqa: F401
    _copy_atomic, _entries, _LocalFile, _open_regular, _regular_file, _tree_files,
)
from kinship.store.refs import _HEX64, _check_ref  # noqa: F401
from kinship.store.s3 import (  # noqa: F401
    _JSON_LIMIT, _SHA_META, _STALE_WRITE, _no_conditional_writes, _s3_errors, _ServerTrouble, _status,
    _transfer_config, _transient_errors, _translate_client_error,
)
from kinship.store.settings import _seconds  # noqa: F401
from kinship.store.transfer import (  # noqa: F401
    _LOCAL_WRITE_ERRNOS, _PACK, _glob_dirs, _move_into_place, _process_alive, _TreeStore,
)
