package = "procthread"
version = "scm-1"
source = { url = "git+file://." }
description = {
  summary = "Real OS threads and processes for Lua behind one interface, and a lab that measures them",
  detailed = [[
    procthread runs Lua functions on pthreads or in forked processes with one worker
    interface, shares tables and arrays in shared memory, passes messages over pipes,
    and ships a lab that measures the classic claims about processes and threads.
  ]],
  license = "MIT",
  homepage = "https://example.invalid/procthread",
}
dependencies = { "lua >= 5.1, < 5.5" }
supported_platforms = { "linux" }
build = {
  type = "builtin",
  modules = {
    ["procthread.core"] = {
      sources = {
        "src/arena.c",
        "src/arena_lua.c",
        "src/array.c",
        "src/buf.c",
        "src/cancel.c",
        "src/channel.c",
        "src/codec.c",
        "src/codec_check.c",
        "src/codec_dec.c",
        "src/codec_enc.c",
        "src/codec_ref.c",
        "src/core.c",
        "src/floor.c",
        "src/fork.c",
        "src/frame.c",
        "src/handle.c",
        "src/htab.c",
        "src/lifecycle.c",
        "src/lock.c",
        "src/pipe.c",
        "src/pipe_end.c",
        "src/pipe_read.c",
        "src/pipe_write.c",
        "src/process.c",
        "src/queue.c",
        "src/select.c",
        "src/shm.c",
        "src/sync.c",
        "src/sys.c",
        "src/table.c",
        "src/table_value.c",
        "src/thread.c",
        "src/wait.c",
        "src/worker.c",
      },
      defines = { "_GNU_SOURCE" },
      incdirs = { "src" },
      libraries = { "pthread", "dl" },
    },
    ["procthread"] = "lua/procthread/init.lua",
    ["procthread.pool"] = "lua/procthread/pool.lua",
    ["procthread.testing"] = "lua/procthread/testing.lua",
    ["procthread.lab.backend"] = "lua/procthread/lab/backend.lua",
    ["procthread.lab.claims"] = "lua/procthread/lab/claims.lua",
    ["procthread.lab.communication"] = "lua/procthread/lab/communication.lua",
    ["procthread.lab.cpu"] = "lua/procthread/lab/cpu.lua",
    ["procthread.lab.creation"] = "lua/procthread/lab/creation.lua",
    ["procthread.lab.failure"] = "lua/procthread/lab/failure.lua",
    ["procthread.lab.format"] = "lua/procthread/lab/format.lua",
    ["procthread.lab"] = "lua/procthread/lab/init.lua",
    ["procthread.lab.isolation"] = "lua/procthread/lab/isolation.lua",
    ["procthread.lab.json"] = "lua/procthread/lab/json.lua",
    ["procthread.lab.main"] = "lua/procthread/lab/main.lua",
    ["procthread.lab.memory"] = "lua/procthread/lab/memory.lua",
    ["procthread.lab.report"] = "lua/procthread/lab/report.lua",
    ["procthread.lab.stats"] = "lua/procthread/lab/stats.lua",
    ["procthread.lab.svg"] = "lua/procthread/lab/svg.lua",
    ["procthread.lab.util"] = "lua/procthread/lab/util.lua",
  },
  -- a Lua script: luarocks wraps it in a launcher that runs the Lua the
  -- rock was built for
  install = { bin = { ["procthread-lab"] = "bin/procthread-lab.lua" } },
}
