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

package.loaded["helper"] = H
return H
