-- Bad-argument errors name the function, on every Lua (issue 9, item 20):
-- each public function is called with an argument of a wrong type in the
-- ways where Lua's own lookup of the name fails (5.1, 5.2 and LuaJIT said
-- "bad argument #1 to '?'"): from C (pcall(f, ...)), as a tail call, and
-- through a computed key (t[k](...)), for module functions and methods.
local pt = require "procthread"
local H = require "helper"
local unpack = unpack or table.unpack

-- The three ways to call t[k](...) whose name lua_getinfo cannot tell.
local STYLES = {
  ["from C"] = function(t, k, args) return pcall(t[k], unpack(args, 1, args.n)) end,
  ["as a tail call"] = function(t, k, args)
    return pcall(function() return t[k](unpack(args, 1, args.n)) end)
  end,
  ["by a computed key"] = function(t, k, args)
    return pcall(function() local r = t[k](unpack(args, 1, args.n)); return r end)
  end,
}

local pack = H.pack

-- Run fn(w, p) with a worker and a pipe to call methods on, then end them.
local function with_handles(fn)
  local w, p = pt.spawn_thread(function() end), pt.pipe()
  fn(w, p)
  assert(w:join(10))
  p:close()
end

-- Each case: the table holding the function, its name, bad arguments.
local function cases(w, p)
  local c = {}
  local function add(t, k, ...) c[#c + 1] = { t = t, k = k, args = pack(...) } end
  add(pt, "spawn_thread", 42)
  add(pt, "spawn_process", "not a function")
  add(pt, "spawn", {})
  add(pt, "sleep", "soon")
  add(pt, "rusage", "nobody")
  add(pt, "fault", {})                   -- refused before any fault is made
  add(pt, "select", 42)
  add(pt, "shared_table", 42)
  add(pt, "add", 42, "k", 1)
  add(pt, "cas", 42, "k", 1, 2)
  add(pt, "locked", 42, print)
  add(pt, "snapshot", 42)
  add(pt, "pairs", 42)
  add(pt, "release", 42)
  add(pt, "array", "ten")
  add(pt, "array", 4, "nowhere")
  add(pt, "configure", 42)
  add(pt, "decode", {})
  add(pt, "discard", 42)
  -- worker methods: a wrong self, and a wrong argument
  add(w, "join", 42)
  add(w, "join", w, "soon")
  add(w, "status", 42)
  add(w, "kill", 42)
  add(w, "kill", w, {})
  add(w, "cancel", 42)
  add(w, "info", 42)
  -- pipe methods
  add(p, "send", 42, "x")
  add(p, "recv", 42)
  add(p, "recv", p, "soon")
  add(p, "close", 42)
  add(p, "close_write", 42)
  add(p, "close_read", 42)
  add(p, "fds", 42)
  return c
end

describe("bad arguments name the function", function()
  H.no_leaks()

  for style, call in pairs(STYLES) do
    it("of the module's functions and methods, called " .. style, function()
      with_handles(function(w, p)
        for _, case in ipairs(cases(w, p)) do
          local ok, err = call(case.t, case.k, case.args)
          assert.is_false(ok, case.k)
          local want = "bad argument #%d+ to '" .. case.k .. "' %("
          assert.is_truthy(tostring(err):find(want),
            ("%s: %s"):format(case.k, tostring(err)))
        end
      end)
    end)
  end

  it("as 5.3 and 5.4 word them: type, option, method self", function()
    with_handles(function(w)
      assert.are.equal("bad argument #1 to 'spawn_thread' (function expected, got number)",
        select(2, pcall(pt.spawn_thread, 42)))
      assert.are.equal("bad argument #2 to 'array' (invalid option 'nowhere')",
        select(2, pcall(pt.array, 4, "nowhere")))
      assert.are.equal("bad argument #1 to 'join' (procthread.Worker expected, got number)",
        select(2, pcall(w.join, 42)))
      assert.are.equal("bad argument #1 to 'discard' (string expected, got number)",
        select(2, pcall(pt.discard, 42)))
      -- called as a method by Lua code, the self is not counted
      local ok, err = pcall(function() w:join("soon") end)
      assert.is_false(ok)
      assert.matches("bad argument #1 to 'join' %(timeout must be a number >= 0 or math.huge, got string%)", err)
    end)
  end)

  it("of values refused by the codec: the function first, then the value's place", function()
    assert.are.equal("encode: values[2]: cannot copy userdata",
      select(2, pcall(pt.encode, 1, io.stdout)))
    assert.are.equal("decode: corrupt message", select(2, pcall(pt.decode, "\255")))
    assert.are.equal("discard: corrupt message", select(2, pcall(pt.discard, "\255")))
    local ch, p = pt.channel(), pt.pipe()
    assert.are.equal("send: message[2]: cannot copy userdata", select(2, pcall(ch.send, ch, 1, io.stdout)))
    assert.are.equal("offer: message[1]: cannot copy userdata", select(2, pcall(ch.offer, ch, 0, io.stdout)))
    assert.are.equal("send: message[1]: cannot copy userdata", select(2, pcall(p.send, p, io.stdout)))
    ch:close(); p:close()
    local s = pt.encode(pt.shared_table({ x = 1 }))
    pt.discard(s)
    assert.are.equal("decode: this message was already decoded (or discarded)",
      select(2, pcall(pt.decode, s)))
  end)

  it("of the pools, which name theirs in the message", function()
    assert.matches("^procthread.pool: bad argument #1", select(2, pcall(pt.pool, 42, 1)))
    local pool = pt.pool("thread", 1)
    assert.matches("^pool:submit: bad argument #1", select(2, pcall(pool.submit, pool, 42)))
    assert.matches("^pool:map: bad argument #2", select(2, pcall(pool.map, pool, print, 42)))
    assert.matches("^pool:close: bad argument #1", select(2, pcall(pool.close, pool, "soon")))
    local f = pool:submit(function() return 1 end)
    assert.matches("^future:get: bad argument #1", select(2, pcall(f.get, f, "soon")))
    assert.matches("^pool:submit: bad self", select(2, pcall(pool.submit, 42, print)))
    -- the error is placed at the caller's line, not in pool.lua
    assert.matches("errors_spec.lua:%d+: pool:close: bad argument #1",
      select(2, pcall(function() pool:close("soon") end)))
    assert.matches("errors_spec.lua:%d+: future:get: bad argument #1",
      select(2, pcall(function() f:get(-1) end)))
    assert.is_true(pool:close(10))
    -- an initarg the codec refuses: counted from the initializer, values[1]
    assert.matches("^procthread.pool: cannot start worker 1 of 1: initializer: values%[2%]: cannot copy userdata$",
      select(2, pcall(pt.pool, "thread", 1, { initializer = function() end, initargs = { io.stdout } })))
  end)
end)

-- Under a low address-space limit (ulimit -v) a thread that cannot get its
-- memory must be an error of spawn_thread, never an abort: procthread's
-- thread-local data was dynamic TLS, which glibc mallocs at a new thread's
-- first access and aborts the process when it cannot ("cannot allocate
-- memory for thread-local data: ABORT").  The limits step through the
-- band just above what the interpreter takes, where some spawns fail.
-- (LuaJIT's trace compiler crashes by itself there, in
-- __register_frame_info_bases from a trace: the workers run without it.)
describe("thread spawns under ulimit -v", function()
  it("fail with an error or succeed, never abort the process #rlimit", function()
    local _, out = H.fresh([[
      require "procthread"
      local f = io.open("/proc/self/status")
      io.write(f:read("*a"):match("VmSize:%s*(%d+)"), "\n")
      f:close()
    ]])
    local base = assert(tonumber(out:match("^(%d+)")), out)
    local failed = 0
    for kib = base + 16000, base + 60000, 3000 do
      local status, text = H.fresh([[
        local pt = require "procthread"
        local fails = 0
        for round = 1, 12 do
          local ws = {}
          for i = 1, 8 do
            local w, err = pt.spawn_thread(function(n)
              if jit then jit.off() end    -- LuaJIT's trace compiler segfaults when out of memory
              local t = {}
              for j = 1, n do t[j] = ("x"):rep(100) end
              return #t
            end, 1000 * round)
            if w then ws[#ws + 1] = w
            else
              -- the thread, or the worker's record (malloc), or the Lua state
              assert(err:match("^pthread_create: ") or err:match("not enough memory")
                     or err:match("^spawn_thread: Cannot allocate memory$"), err)
              fails = fails + 1
            end
          end
          for _, w in ipairs(ws) do w:join() end
        end
        io.write("fails ", fails, "\n")
      ]], "ulimit -v " .. kib .. ";")
      assert.are.equal(0, status, "ulimit -v " .. kib .. ": " .. tostring(text))
      assert.matches("^fails %d+\n$", text)
      failed = failed + tonumber(text:match("%d+"))
    end
    assert.is_true(failed > 0, "no spawn failed: the limits do not reach the band")
  end)
end)
