-- spec/helper.lua: what the project's specs share.  Every spec file says
--
--   local H = require "helper"
--
-- (.busted also loads this file first; both give the same table, and
-- nothing is set globally).  H holds every function of procthread.testing
-- (public: users load it in their own specs; after each test nothing may
-- be left over, H.no_leaks()) and the project's own helpers below.
local T = require "procthread.testing"

-- a copy, so that a spec adding its own H.x does not change the module
local H = {}
for k, v in pairs(T) do H[k] = v end

-- Generous bound (seconds) for joins, receives and waits: the machine is
-- shared and noisy.
H.T = 20

local unpack = unpack or table.unpack

function H.pack(...) return { n = select("#", ...), ... } end

-- Join w (bounded); raise unless it succeeded; its results.
function H.join_ok(w, timeout)
  local r = H.pack(w:join(timeout or H.T))
  assert(r[1] == true, "worker failed: " .. tostring(r[2]))
  return unpack(r, 2, r.n)
end

function H.shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- A new empty directory, and its removal.
function H.tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("*l"); p:close()
  return d
end

function H.rmdir(d) os.execute("rm -rf " .. H.shell_quote(d)) end

-- Like H.fresh, but the interpreter runs under `wrap` (a command that
-- execs its arguments, e.g. perl setting a signal disposition first), with
-- extra environment `env` ("NAME=value ...").  Returns status, output.
function H.fresh_under(wrap, code, env)
  return T.fresh(code, env, { wrap = wrap ~= "" and wrap or nil })
end

function H.range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

-- Live shared objects and open fds, after a full collection.
function H.usage()
  collectgarbage(); collectgarbage()
  return { objects = require("procthread").shm_stats().objects, fds = H.fds() }
end

-- Wait (bounded: workers end asynchronously) until usage is back to `base`.
function H.assert_released(base)
  local now
  H.eventually(function()
    now = H.usage()
    return now.objects == base.objects and now.fds == base.fds
  end, H.T)
  require("luassert").are.same(base, now)
end

-- Compile the C source text `source` with cc and `flags` (after the
-- source: "-shared -fPIC" for a Lua module, or more sources and -l...).
-- No LD_PRELOAD (a sanitizer's runtime would be loaded into cc).  The
-- output's path; the caller removes it.
function H.cc(source, flags)
  local out = os.tmpname()
  local src = out .. ".c"
  local f = assert(io.open(src, "w"))
  f:write(source)
  f:close()
  local ok = os.execute(("env -u LD_PRELOAD cc -std=gnu11 -o %s %s %s"):format(out, src, flags))
  os.remove(src)
  assert(ok == true or ok == 0, "cc failed: " .. flags)
  return out
end

-- A C library, built here, whose l_fork is a bare fork() (procthread's own
-- fork path is not taken: the host's kind) and l_wait a waitpid(-1) that
-- answers the exit code (128 + signal when killed); fork and waitpid for
-- Lua without Lua's headers (the push function takes a 64-bit integer on
-- every Lua of x86-64 and arm64).  Its path; the caller removes it.
function H.foreign_fork_lib()
  return H.cc([[
    #include <sys/wait.h>
    #include <unistd.h>
    typedef struct lua_State lua_State;
    extern void lua_pushinteger(lua_State *L, long long n);
    int l_fork(lua_State *L) { lua_pushinteger(L, fork()); return 1; }
    int l_wait(lua_State *L) {
      int st = 0;
      waitpid(-1, &st, 0);
      lua_pushinteger(L, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
      return 1;
    }
  ]], "-shared -fPIC")
end

-- In a fresh interpreter: run `setup` (Lua; procthread is `pt`), then fork
-- bare (H.foreign_fork_lib: not procthread's fork) and run `child` in the
-- child, a function body whose truthy return is success.  Raises unless
-- the child succeeded.
function H.in_bare_fork(setup, child)
  local so = H.foreign_fork_lib()
  local status, out = T.fresh(([[
    local pt = require "procthread"
    local fork, wait = package.loadlib(%q, "l_fork"), package.loadlib(%q, "l_wait")
    %s
    io.stdout:flush()
    if fork() == 0 then
      local ok = (function() %s end)()
      os.exit(ok and 0 or 3)
    end
    io.write("child exit ", wait(), "\n")
  ]]):format(so, so, setup, child))
  os.remove(so)
  local assert = require "luassert"
  assert.are.equal(0, status, out)
  assert.matches("child exit 0\n", out, 1, true)
end

package.loaded["helper"] = H
return H
