"""Make this process's bitsandbytes believe the CPU lacks AVX512-BF16 (benchmarks/bench_suite.sh puts this folder on
PYTHONPATH, so every process the test suite starts gets it). bitsandbytes asks its native library each time
(`functional.has_avx512bf16` calls `lib.has_avx512bf16_cpu()`), so answering for the library covers every caller."""

import importlib.abc
import importlib.util
import sys


class _AnswerNoAvx512Bf16(importlib.abc.MetaPathFinder):
    """Once `bitsandbytes.functional` has run, its native library answers False to the AVX512-BF16 question."""

    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        sys.meta_path.insert(0, self)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            module.lib.has_avx512bf16_cpu = lambda: False

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _AnswerNoAvx512Bf16())
