-- The handle toolkit (src/handle.h): the check by metatable, and the last
-- checked userdata it remembers, for shared tables, arrays and channels.
local pt = require "procthread"
local H = require "helper"

describe("handle toolkit", function()
  after_each(function() if jit then jit.flush() end end)
  H.no_leaks()

  local kinds = {
    { "shared table", function() return pt.shared_table() end, "__index", "shared table expected" },
    { "private array", function() return pt.array(1) end, "__index", "array expected" },
    { "shared array", function() return pt.array(1, "shared") end, "__index", "array expected" },
  }
  for _, k in ipairs(kinds) do
    local what, new, mm, expected = k[1], k[2], k[3], k[4]

    it(what .. ": a metamethod called on another kind of userdata raises, after a use", function()
      local x = new()
      local _ = x[1]                         -- its check remembers x
      local f = getmetatable(x)[mm]
      local foreign = { io.stdout, pt.channel(), (pt.array(1)), pt.shared_table() }
      for _, u in ipairs(foreign) do
        if getmetatable(u) ~= getmetatable(x) then
          local ok, err = pcall(f, u, 1)
          assert.is_false(ok)
          assert.matches(expected, err)
        end
      end
      for _, u in ipairs(foreign) do if u ~= io.stdout then pcall(pt.release, u) end end
      foreign[2] = nil
      pt.release(x)
    end)

    it(what .. ": finalized, then resurrected by another finalizer: released, never reused", function()
      local saved
      do
        local x = new()
        local _ = x[1]                       -- remembered
        -- a table finalized in the same cycle keeps x alive (5.2+: __gc on
        -- tables; 5.1 and LuaJIT: a proxy's __gc)
        local keeper = { x = x }
        local function keep(t) saved = t.x end
        if newproxy then
          local p = newproxy(true)
          getmetatable(p).__gc = function() keep(keeper) end
          keeper.p = p
        else
          setmetatable(keeper, { __gc = keep })
        end
      end
      collectgarbage(); collectgarbage()
      assert.is_not_nil(saved)
      local ok, err = pcall(function() return saved[1] end)
      assert.is_false(ok)
      assert.matches("released", err)
      saved = nil
      collectgarbage(); collectgarbage()
      -- new userdata may take its memory now: each is what it was made as
      for _ = 1, 200 do
        local u = pt.channel()
        local ok2 = pcall(function() return getmetatable(new())[mm](u, 1) end)
        assert.is_false(ok2)
        u:close()
      end
      collectgarbage()
    end)
  end
end)
