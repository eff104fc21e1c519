-- spec/helper.lua: loaded before every spec file (see .busted).
-- After each test nothing may be left over: no new fd, no child process,
-- no extra thread, and the shared arena's live objects back where they
-- were.  A test that leaks fails in after_each with what it left.
local pt = require "procthread"

local H = {}

local function count_dir(path)
  local n = 0
  local p = io.popen("ls -1 " .. path .. " 2>/dev/null")
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end

-- fds open in this process (the ls above opens a few of its own, equally
-- every time, so comparisons stay exact).
-- ls may run before io.popen has closed its own copy of the pipe's write
-- end: the lower of two listings is the true count.
function H.fds()
  local dir = "/proc/" .. H.pid() .. "/fd"
  return math.min(count_dir(dir), count_dir(dir))
end

function H.pid()
  local f = assert(io.open("/proc/self/stat"))
  local s = f:read("*l"); f:close()
  return s:match("^(%d+)")
end

-- Child processes of this process that still exist (zombies included).
function H.children()
  local pid = H.pid()
  local kids = {}
  local p = io.popen("cat /proc/" .. pid .. "/task/*/children 2>/dev/null")
  local s = p:read("*a"); p:close()
  for k in s:gmatch("%d+") do
    -- the cat itself and the shell of io.popen are our children too
    local f = io.open("/proc/" .. k .. "/comm")
    local comm = f and f:read("*l"); if f then f:close() end
    if comm and comm ~= "sh" and comm ~= "cat" and comm ~= "ls" then kids[#kids + 1] = k .. ":" .. tostring(comm) end
  end
  return kids
end

function H.threads()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("*a"); f:close()
  return tonumber(s:match("Threads:%s*(%d+)"))
end

function H.shm_live()
  if pt.shm_stats then
    local ok, st = pcall(pt.shm_stats)
    if ok and st then return st.objects or st.live or 0 end
  end
  return 0
end

-- Wait (bounded) for a condition that other threads or processes settle.
function H.eventually(fn, timeout)
  local deadline = pt.now() + (timeout or 5)
  repeat
    if fn() then return true end
    pt.sleep(0.005)
  until pt.now() > deadline
  return fn()
end

-- Snapshot at the start of a test; check() at its end.
function H.snapshot()
  collectgarbage(); collectgarbage()
  return { fds = H.fds(), threads = H.threads(), shm = H.shm_live() }
end

function H.check(before)
  local ok = H.eventually(function()
    collectgarbage(); collectgarbage()
    return H.fds() == before.fds and #H.children() == 0
       and H.threads() == before.threads and H.shm_live() == before.shm
  end, 5)
  if not ok then
    error(("leak after test: fds %d -> %d, threads %d -> %d, children {%s}, shm objects %d -> %d")
      :format(before.fds, H.fds(), before.threads, H.threads(),
              table.concat(H.children(), ","), before.shm, H.shm_live()), 0)
  end
end

-- Run a Lua snippet in a fresh interpreter (the one running the specs),
-- so that a crash or a resource limit fails one test, not the run.
-- `prefix` is shell run before the interpreter (for example "ulimit -n 20;").
-- opts.nobody = true runs it as user nobody (root ignores RLIMIT_NPROC),
-- with the prefix applied inside.
-- Returns exit status, stdout+stderr.
function H.fresh(code, prefix, opts)
  local lua = H.interpreter()
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w")); f:write(code); f:close()
  local run = ("%s %s"):format(lua, tmp)
  local lpath, cpath, dir = package.path, package.cpath, nil
  if opts and opts.nobody then
    -- nobody may not read the checkout (CI clones anywhere): give it a copy
    dir = os.tmpname(); os.remove(dir)
    local so = assert(H.searchpath("procthread.core", package.cpath))
    local init = assert(H.searchpath("procthread", package.path))
    assert(os.execute(("mkdir -p %s/procthread && cp %s %s/procthread/core.so && cp %s %s/procthread/init.lua && chmod -R a+rX %s && chmod 0644 %s")
      :format(dir, so, dir, init, dir, dir, tmp)))
    lpath, cpath = dir .. "/?.lua;" .. dir .. "/?/init.lua", dir .. "/?.so"
    run = ("setpriv --reuid=65534 --regid=65534 --clear-groups bash -c %q")
      :format("cd " .. dir .. "; " .. (prefix or "") .. " exec " .. run)
    prefix = ""
  end
  -- under AddressSanitizer, a child with tight resource limits cannot run
  -- LeakSanitizer; leaks are checked in the spec process itself
  local asan = os.getenv("ASAN_OPTIONS") and "ASAN_OPTIONS=$ASAN_OPTIONS:detect_leaks=0" or ""
  local cmd = ("%s %s LUA_PATH=%q LUA_CPATH=%q timeout 60 %s 2>&1; echo \"::status:$?\"")
    :format(prefix or "", asan, lpath, cpath, run)
  local p = io.popen(cmd)                -- one shell: $? is the command's
  local out = p:read("*a"); p:close()
  os.remove(tmp)
  if dir then os.execute("rm -rf " .. dir) end
  local status = tonumber(out:match("::status:(%d+)%s*$"))
  return status, (out:gsub("::status:%d+%s*$", ""))
end

-- package.searchpath for every Lua (5.1 has none)
function H.searchpath(name, path)
  local file = name:gsub("%.", "/")
  for pat in path:gmatch("[^;]+") do
    local f = pat:gsub("%?", file)
    local h = io.open(f)
    if h then h:close() return f end
  end
  return nil
end

function H.interpreter()
  local i = -1
  while arg and arg[i - 1] do i = i - 1 end
  local exe = arg and arg[i] or "lua"
  if exe:match("busted") or exe:match("%.lua$") then
    -- busted re-executes itself under the chosen Lua; find it in /proc
    local p = io.popen("readlink /proc/" .. H.pid() .. "/exe")
    local link = p:read("*l")
    p:close()
    exe = link or "lua"
  end
  return exe
end

-- Install the leak check around every test of the calling spec file.
function H.no_leaks()
  local busted = require "busted"
  local before
  busted.before_each(function() before = H.snapshot() end)
  busted.after_each(function() H.check(before) end)
end

package.loaded["helper"] = H
_G.H = H
return H
