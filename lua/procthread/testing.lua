-- procthread.testing: what procthread's own specs rely on, for your specs.
--
--   local T = require "procthread.testing"
--   describe("my pool", function()
--     T.no_leaks()          -- after each test: no fd, child, thread or
--                           -- shared object left over, or the test fails
--     it("survives a crash", function()
--       local status, out = T.fresh([[require "procthread".fault("segv")]])
--       assert.is_true(status ~= 0)
--     end)
--   end)
--
-- Linux only (it reads /proc).  See docs/api.md, "Testing helpers".
local pt = require "procthread"

local M = {}

-- fds open in this process, counted without a subprocess (a listing by
-- `ls` through io.popen races with popen's own pipe ends): probe every slot
-- of the fd table.  The probe's own fd is not installed yet while its path
-- is looked up, so it never counts itself.
function M.fds()
  local f = assert(io.open("/proc/self/status"))
  local size = tonumber(f:read("*a"):match("FDSize:%s*(%d+)")) or 1024
  f:close()
  local n = 0
  for i = 0, size - 1 do
    local h = io.open("/proc/self/fdinfo/" .. i)
    if h then n = n + 1; h:close() end
  end
  return n - pt._spare_fds()     -- less those kept for the next process spawn
end

function M.pid()
  local f = assert(io.open("/proc/self/stat"))
  local s = f:read("*l"); f:close()
  return s:match("^(%d+)")
end

-- Child processes of this process that still exist (zombies included).
function M.children()
  local pid = M.pid()
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

-- OS threads of this process, less the ones procthread keeps on purpose:
-- the idle threads kept for the next spawn_thread (at most 4) and
-- pt.select's helper (one per process, made by the first wait on channels
-- next to fds). They hold no worker, fd or shared object; a thread that
-- still runs a worker is counted.
function M.threads()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("*a"); f:close()
  return tonumber(s:match("Threads:%s*(%d+)")) - pt._spare_threads() - pt._helper_threads()
end

function M.shm_live()
  if pt.shm_stats then
    local ok, st = pcall(pt.shm_stats)
    if ok and st then return st.objects or st.live or 0 end
  end
  return 0
end

-- Wait (bounded) for a condition that other threads or processes settle.
function M.eventually(fn, timeout)
  local deadline = pt.now() + (timeout or 5)
  repeat
    if fn() then return true end
    pt.sleep(0.005)
  until pt.now() > deadline
  return fn()
end

-- Snapshot at the start of a test; check() at its end.
function M.snapshot()
  collectgarbage(); collectgarbage()
  return { fds = M.fds(), threads = M.threads(), shm = M.shm_live() }
end

-- before: a snapshot; name (optional): the test, for the message.
function M.check(before, name)
  local ok = M.eventually(function()
    collectgarbage(); collectgarbage()
    -- fewer threads is no leak: one that procthread ran for itself (the
    -- reaper of collected children, say) may have been there at the start
    return M.fds() == before.fds and #M.children() == 0
       and M.threads() <= before.threads and M.shm_live() == before.shm
  end, 5)
  if not ok then
    error(("leak after test%s: fds %d -> %d, threads %d -> %d, children {%s}, shm objects %d -> %d")
      :format(name and (" '" .. name .. "'") or "", before.fds, M.fds(), before.threads, M.threads(),
              table.concat(M.children(), ","), before.shm, M.shm_live()), 0)
  end
end

-- Run the shell command line `cmd` (one shell: io.popen's own, so $? is
-- the command's).  Returns its exit status, its stdout+stderr.
function M.sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"::status:$?\"")
  local out = p:read("*a"); p:close()
  return tonumber(out:match("::status:(%d+)%s*$")), (out:gsub("::status:%d+%s*$", ""))
end

-- Run a Lua snippet in a fresh interpreter (the one running the specs),
-- so that a crash or a resource limit fails one test, not the run.
-- `prefix` is shell run before the interpreter (for example "ulimit -n 20;",
-- or "NAME=value" for its environment).
-- opts.nobody = true runs it as user nobody (root ignores RLIMIT_NPROC),
-- with the prefix applied inside.  opts.wrap: a command that execs its
-- arguments, put in front of the interpreter (e.g. perl setting a signal
-- disposition first).
-- Returns exit status, stdout+stderr.
function M.fresh(code, prefix, opts)
  local lua = M.interpreter()
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w")); f:write(code); f:close()
  local run = ("%s %s"):format(lua, tmp)
  if opts and opts.wrap then run = opts.wrap .. " " .. run end
  local lpath, cpath, dir = package.path, package.cpath, nil
  if opts and opts.nobody then
    -- nobody may not read the checkout (CI clones anywhere): give it a copy
    dir = os.tmpname(); os.remove(dir)
    local so = assert(M.searchpath("procthread.core", package.cpath))
    local init = assert(M.searchpath("procthread", package.path))
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
  local status, out = M.sh(("%s %s LUA_PATH=%q LUA_CPATH=%q timeout 60 %s")
    :format(prefix or "", asan, lpath, cpath, run))
  os.remove(tmp)
  if dir then os.execute("rm -rf " .. dir) end
  return status, out
end

-- package.searchpath for every Lua (5.1 has none)
function M.searchpath(name, path)
  local file = name:gsub("%.", "/")
  for pat in path:gmatch("[^;]+") do
    local f = pat:gsub("%?", file)
    local h = io.open(f)
    if h then h:close() return f end
  end
  return nil
end

function M.interpreter()
  local i = -1
  while arg and arg[i - 1] do i = i - 1 end
  local exe = arg and arg[i] or "lua"
  if exe:match("busted") or exe:match("%.lua$") then
    -- busted re-executes itself under the chosen Lua; find it in /proc
    local p = io.popen("readlink /proc/" .. M.pid() .. "/exe")
    local link = p:read("*l")
    p:close()
    exe = link or "lua"
  end
  return exe
end

-- busted reports a test that ended with `return pending(...)` (a tail
-- call) where the call no longer is: "(tail call) @ -1", or busted's own
-- script.  The spec file's getTrace hook (busted asks it for every trace
-- and builds the message's "file:line:" from it) points such a trace at
-- the test's function instead.  Also keeps the running test's name for
-- the leak message.
local current, current_fn
local function lost(info)
  return info.currentline == -1 or info.short_src == "(tail call)"
      or (info.what == "main" and info.short_src:match("busted$") ~= nil)
end

local function hook_file(busted, element)
  local parent = busted.parent(element)
  while parent and not parent.file do parent = busted.parent(parent) end
  local run = parent and parent.file[1] and parent.file[1].run
  if type(run) ~= "table" or run.procthread_hooked then return end
  local orig = run.getTrace
  run.getTrace = function(name, info)
    if orig then info = orig(name, info) or info end
    if type(current_fn) == "function" and lost(info) then
      local d = debug.getinfo(current_fn, "S")
      info.short_src, info.currentline = d.short_src, d.linedefined
    end
    return info
  end
  run.procthread_hooked = true
end

local function watch_tests(busted)
  busted.subscribe({ "test", "start" }, function(element)
    current, current_fn = element.name, element.run
    pcall(hook_file, busted, element)
    return nil, true
  end, { priority = 1 })
end

-- Install the leak check around every test of the calling describe block
-- (or file): a snapshot before each test, M.check after it.
local watching = false
function M.no_leaks()
  local busted = require "busted"
  if not watching then watch_tests(busted); watching = true end
  local before
  busted.before_each(function() before = M.snapshot() end)
  busted.after_each(function() M.check(before, current) end)
end

return M
