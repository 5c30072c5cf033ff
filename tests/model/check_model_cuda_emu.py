# check_model_cuda_emu.py: the whole Qwen3-MoE forward on the CUDA backend without a GPU, through the fake
# libcuda/NVRTC of tests/cuda-emu (generated kernels compiled for the host, run on fibers): per-layer cosine,
# router top-k and greedy tokens against the CPU backend on the tiny model. Slow (kernels compile on first
# use; the cache in build/cuda-emu/cache is shared with check_cuda_emu.sh), so a short prompt.
# qmoe-test: normal-only (fibers switch stacks, which the sanitizers do not follow)
import json, os, shutil, subprocess, sys, tempfile
import numpy as np
import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinymodel as tm

QMOE = os.path.join(os.environ.get("QMOE_BIN", "build"), "qmoe")
D = os.path.abspath("build/cuda-emu")


def main():
    cxx = os.environ.get("QMOE_EMU_CXX", "c++")
    if not shutil.which(cxx):
        print(f"skip model-cuda-emu: no C++ compiler ({cxx}) to build the kernels for the host")
        return 0
    os.makedirs(os.path.join(D, "cache"), exist_ok=True)
    cc = os.environ.get("CC", "cc")
    for lib, src, extra in (("libcuda.so.1", "fake_cuda.c", ["-ldl"]), ("libnvrtc.so", "fake_nvrtc.c", [])):
        p = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-o", os.path.join(D, lib),
                            "tests/cuda-emu/" + src, *extra], capture_output=True, text=True)
        if p.returncode:
            print(f"not ok model-cuda-emu/build: {p.stderr}")
            return 1
    env = dict(os.environ, LD_LIBRARY_PATH=D + (":" + os.environ["LD_LIBRARY_PATH"] if os.environ.get("LD_LIBRARY_PATH") else ""),
               QMOE_EMU_HEADER=os.path.abspath("tests/cuda-emu/emu.h"), QMOE_CUDA_CACHE=os.path.join(D, "cache"))
    env.pop("QMOE_CUDA_DEVICE", None)
    tmp = tempfile.mkdtemp(prefix="qmoe-model-emu-")
    failed = 0
    try:
        model = os.path.join(tmp, "tiny.gguf")
        tm.write(model)
        traces = {}
        for be in ("cpu", "cuda"):
            out = os.path.join(tmp, be + ".gguf")
            p = subprocess.run([QMOE, "trace", "-m", model, "--backend", be, "--tokens", "1,2,3",
                                "--stages", "l_out,ffn_moe_topk,result_output", "-o", out],
                               capture_output=True, text=True, env=env)
            if p.returncode:
                print(f"not ok model-cuda-emu/trace_{be}: {p.stderr.strip()}")
                return 1
            traces[be] = {t.name: np.array(t.data, dtype=np.float64 if t.tensor_type == 0 else np.int64)
                          for t in gguf.GGUFReader(out).tensors}
        c, g = traces["cpu"], traces["cuda"]
        cos = min(float(c[k].ravel() @ g[k].ravel() / np.linalg.norm(c[k]) / np.linalg.norm(g[k]))
                  for k in c if k.endswith("l_out"))
        ok = cos >= 0.9999
        print(("ok" if ok else "not ok") + f" model-cuda-emu/l_out_cosine_vs_cpu" + ("" if ok else f": {cos:.7f}"))
        failed += not ok
        ok = all(np.array_equal(c[k], g[k]) for k in c if k.endswith("ffn_moe_topk"))
        print(("ok" if ok else "not ok") + " model-cuda-emu/topk_vs_cpu" + ("" if ok else ": router top-k differs"))
        failed += not ok
        ids = {}
        for be in ("cpu", "cuda"):
            p = subprocess.run([QMOE, "run", "-m", model, "--backend", be, "--tokens", "1,2", "-n", "3", "--ignore-eos",
                                "--json"], capture_output=True, text=True, env=env)
            ids[be] = p.stdout.strip() if p.returncode == 0 else "error: " + p.stderr.strip()
        try:
            a, b = json.loads(ids["cpu"])["ids"], json.loads(ids["cuda"])["ids"]
            ok = a == b and len(a) == 3
        except Exception:
            ok, a, b = False, ids["cpu"], ids["cuda"]
        print(("ok" if ok else "not ok") + " model-cuda-emu/greedy_vs_cpu" + ("" if ok else f": cpu {a} cuda {b}"))
        failed += not ok
        # Each position runs as one replayed CUDA graph by default; launched stage by stage, the same tokens.
        outs = {}
        for mode, extra in (("graph", {}), ("launches", {"QMOE_NO_GRAPH": "1"})):
            p = subprocess.run([QMOE, "run", "-m", model, "--backend", "cuda", "--tokens", "1,2,3", "-n", "4",
                                "--ignore-eos", "--json"], capture_output=True, text=True, env=dict(env, **extra))
            outs[mode] = json.loads(p.stdout)["ids"] if p.returncode == 0 else "error: " + p.stderr.strip()
        ok = outs["graph"] == outs["launches"] and len(outs["graph"]) == 4
        print(("ok" if ok else "not ok") + " model-cuda-emu/graph_same_as_launches" +
              ("" if ok else f": graph {outs['graph']} launches {outs['launches']}"))
        failed += not ok
        p = subprocess.run([QMOE, "bench", "-m", model, "--backend", "cuda", "-p", "2", "-n", "2", "--repeats", "1",
                            "--copy-mib", "1", "--json"], capture_output=True, text=True, env=env)
        try:
            b = json.loads(p.stdout)
            ok = b["timer"] == "CUDA events" and b["decode_tokens_per_s"] > 0 and b["copy_gb_per_s"] > 0
        except Exception as e:
            ok, b = False, f"{p.stdout} {p.stderr} {e}"
        print(("ok" if ok else "not ok") + " model-cuda-emu/bench_cuda_events" + ("" if ok else f": {b}"))
        failed += not ok
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
