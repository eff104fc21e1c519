-- spec/lab_floor_spec.lua: the plain-C floors the lab measures beside
-- procthread's mechanisms (src/floor.c): pt._floor_pipe, pt._floor_shm.
local H = require "helper"
local pt = require "procthread"

local FLOORS = { "_floor_pipe", "_floor_shm" }

describe("lab C floors", function()
  H.no_leaks()

  it("check their arguments, raising with the function's name", function()
    for _, name in ipairs(FLOORS) do
      local f = pt[name]
      assert.is_function(f)
      local bad = {
        { { 0, 10, "thread" }, "size" }, { { 2 ^ 31, 10, "thread" }, "size" }, { { -8, 10, "thread" }, "size" },
        { { 8, 0, "thread" }, "count" }, { { 8, -1, "process" }, "count" },
        { { 8, 10, "fiber" }, "invalid option" }, { { 8, 10 }, "string expected" },
        { { "x", 10, "thread" }, "number expected" }, { { 8, 1.5, "thread" }, "number has no integer" },
      }
      if _VERSION == "Lua 5.1" or _VERSION == "Lua 5.2" then bad[#bad] = nil end  -- 1.5 truncates there
      for _, case in ipairs(bad) do
        local ok, err = pcall(f, (table.unpack or unpack)(case[1], 1, 3))
        assert.is_false(ok, name .. " accepted " .. tostring(case[1][1]) .. ", " .. tostring(case[1][2]))
        assert.matches(case[2], err, 1, true)
        if case[2] == "size" or case[2] == "count" then assert.matches(name, err, 1, true) end
      end
    end
  end)

  it("give a positive round trip in seconds, longer for a bigger message, between threads and between processes", function()
    for _, name in ipairs(FLOORS) do
      for _, kind in ipairs({ "thread", "process" }) do
        local small = assert(pt[name](8, 200, kind))
        local big = assert(pt[name](4 * 1048576, 4, kind))
        assert.is_number(small)
        -- sane: a round trip of 8 bytes takes more than 10 ns and less
        -- than 50 ms even on a loaded machine; 4 MiB copied four times
        -- (there and back, in and out) cannot be as fast as 8 bytes
        assert.is_true(small > 1e-8 and small < 0.05, ("%s %s: %g s"):format(name, kind, small))
        assert.is_true(big > small, ("%s %s: 4 MiB %g s, 8 B %g s"):format(name, kind, big, small))
      end
    end
  end)

  it("return an OS failure as nil, '<op>: <strerror>', errno instead of raising", function()
    local status, out = H.fresh([[
      local pt = require "procthread"
      local keep = {}
      while true do
        local f = io.open("/dev/null")
        if not f then break end
        keep[#keep + 1] = f
      end
      local r, err, errno = pt._floor_pipe(8, 10, "thread")
      for _, f in ipairs(keep) do f:close() end
      print(tostring(r), err, math.type and math.type(errno) or type(errno))
      print(pt._floor_pipe(8, 10, "thread") > 0)
    ]], "ulimit -n 64;")
    assert.equals(0, status, out)
    assert.matches("nil\tpipe: Too many open files\t%a+", out)
    assert.matches("\ntrue", out, 1, true)
  end)

  it("leave no child, thread or fd behind, even when called from a worker", function()
    local w = pt.spawn("thread", function()
      local p = require "procthread"
      return p._floor_pipe(64, 50, "process") > 0 and p._floor_shm(64, 50, "process") > 0
    end)
    local ok, r = w:join(H.T)
    assert.is_true(ok)
    assert.is_true(r)
  end)
end)
