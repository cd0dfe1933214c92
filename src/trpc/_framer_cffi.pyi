"""What ``trpc._framer_cffi`` exports: the cffi module that ``build_ffi.py`` builds from the
``BEGIN CDEF`` ... ``END CDEF`` region of ``csrc/framer.h`` (keep this file in step with that
region).  ``ffi`` is cffi's own; ``lib`` holds the header's constants and functions.  C pointers
come back as cffi ``CData`` objects (indexing a ``uint32_t *`` or ``uint8_t *`` one gives an
int); integer types are Python ints."""

from typing import ClassVar, final

from _cffi_backend import FFI, _CDataBase

ffi: FFI

_CData = _CDataBase

@final
class _Lib:
    TRPC_FRAMER_HEADER_SIZE: ClassVar[int]
    TRPC_FRAMER_MAX_FRAME_SIZE_LIMIT: ClassVar[int]
    TRPC_FRAMER_MAX_CAPACITY: ClassVar[int]
    TRPC_FRAMER_FORMAT_PER_FRAME: ClassVar[int]
    TRPC_FRAMER_CARRIED: ClassVar[int]
    TRPC_FRAMER_COLLECTED: ClassVar[int]
    TRPC_FRAMER_OK: ClassVar[int]
    TRPC_FRAMER_TOO_LARGE: ClassVar[int]
    TRPC_FRAMER_TRUNCATED: ClassVar[int]
    TRPC_FRAMER_NO_MEMORY: ClassVar[int]
    TRPC_FRAMER_BAD_ARGUMENT: ClassVar[int]
    @staticmethod
    def trpc_framer_version() -> _CData: ...
    @staticmethod
    def trpc_framer_new(max_frame_size: int, capacity: int, large_payload: int, /) -> _CData: ...
    @staticmethod
    def trpc_framer_free(framer: _CData, /) -> None: ...
    @staticmethod
    def trpc_framer_feed(framer: _CData, data: bytes, length: int, start: int, /) -> int: ...
    @staticmethod
    def trpc_framer_result_of(framer: _CData, /) -> _CData: ...
    @staticmethod
    def trpc_framer_columns(framer: _CData, /) -> _CData: ...
    @staticmethod
    def trpc_framer_type_flags(framer: _CData, /) -> _CData: ...
    @staticmethod
    def trpc_framer_format(framer: _CData, /) -> _CData: ...
    @staticmethod
    def trpc_framer_carried(framer: _CData, /) -> _CData: ...
    @staticmethod
    def trpc_framer_runs(framer: _CData, /) -> _CData: ...
    @staticmethod
    def trpc_framer_run_type_flags(framer: _CData, /) -> _CData: ...
    @staticmethod
    def trpc_framer_close(framer: _CData, /) -> int: ...
    @staticmethod
    def trpc_framer_buffered(framer: _CData, /) -> int: ...
    @staticmethod
    def trpc_framer_announced(framer: _CData, /) -> int: ...

lib: _Lib
