-- The rockspec must build what the checkout has: every C file of src/ and
-- every Lua module of lua/procthread/ (luarocks' builtin type lists them).
local H = require "helper"

local function lines(cmd)
  local t = {}
  local p = io.popen(cmd)
  for l in p:lines() do t[#t + 1] = l end
  p:close()
  return t
end

describe("procthread-scm-1.rockspec", function()
  H.no_leaks()
  local spec = {}
  local chunk = assert((loadfile)("procthread-scm-1.rockspec", "t", spec) or loadfile("procthread-scm-1.rockspec"))
  if setfenv then setfenv(chunk, spec) end
  chunk()
  local mods = spec.build.modules

  it("compiles every C file of src/", function()
    local listed = {}
    for _, f in ipairs(mods["procthread.core"].sources) do listed[f] = true end
    for _, f in ipairs(lines("ls src/*.c")) do
      assert.is_true(listed[f] == true, f .. " is not in the rockspec")
    end
  end)

  it("installs every Lua module under its name", function()
    for _, f in ipairs(lines("find lua/procthread -name '*.lua' | sort")) do
      local name = f:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
      assert.are.equal(f, mods[name], name .. " is not installed by the rockspec")
    end
  end)

  it("installs the lab's command line", function()
    assert.are.equal("bin/procthread-lab", spec.build.install.bin["procthread-lab"])
  end)
end)
