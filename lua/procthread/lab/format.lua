-- procthread.lab.format: how the lab writes numbers, in one place: a value
-- in its unit (durations, bytes, rates, ratios), the display unit of a
-- chart's axis, a run time in words, and the few table cells the
-- experiments share.  The SVG writer, the report, the progress line and
-- the experiments all write numbers through it.
local M = {}

-- Bytes per unit, for the units that count bytes.
local BYTES = { B = 1, ["B/s"] = 1, KiB = 1024, MiB = 1048576 }

function M.is_bytes(unit) return unit ~= nil and BYTES[unit] ~= nil end

-- Three significant digits, never in exponent form ("1.23", "1234").
function M.sig3(v)
  local s = ("%.3g"):format(v)
  if s:find("e") then s = ("%.0f"):format(v) end
  return s
end
local sig3 = M.sig3

-- Human form of a value in a unit: 0.00123 "s" -> "1.23 ms".
function M.value(v, unit)
  if v == nil then return "-" end
  if v ~= v then return "nan" end
  local a = math.abs(v)
  if unit == "s" then
    if a == 0 then return "0 s" end
    if a >= 1 then return sig3(v) .. " s" end
    if a >= 1e-3 then return sig3(v * 1e3) .. " ms" end
    if a >= 1e-6 then return sig3(v * 1e6) .. " µs" end
    return sig3(v * 1e9) .. " ns"
  elseif M.is_bytes(unit) then
    local suffix = unit == "B/s" and "/s" or ""
    local b = v * BYTES[unit]
    local ab = math.abs(b)
    if ab >= 1073741824 then return sig3(b / 1073741824) .. " GiB" .. suffix end
    if ab >= 1048576 then return sig3(b / 1048576) .. " MiB" .. suffix end
    if ab >= 1024 then return sig3(b / 1024) .. " KiB" .. suffix end
    return sig3(b) .. " B" .. suffix
  elseif unit == "/s" then
    if a >= 1e9 then return sig3(v / 1e9) .. " G/s" end
    if a >= 1e6 then return sig3(v / 1e6) .. " M/s" end
    if a >= 1e3 then return sig3(v / 1e3) .. " k/s" end
    return sig3(v) .. " /s"
  elseif unit == "x" then
    return sig3(v) .. "×"
  elseif unit == "%" then
    return sig3(v) .. " %"
  elseif unit and unit ~= "" then
    return sig3(v) .. " " .. unit
  end
  return sig3(v)
end

-- The display unit for values up to `maxv` in `unit` (an axis shows all
-- its ticks in one): returns the factor (value / factor is shown) and the
-- suffix.
function M.scale(unit, maxv)
  maxv = maxv or 0
  if unit == "s" then
    if maxv >= 1 then return 1, " s" end
    if maxv >= 1e-3 then return 1e-3, " ms" end
    if maxv >= 1e-6 then return 1e-6, " µs" end
    return 1e-9, " ns"
  elseif M.is_bytes(unit) then
    local base = BYTES[unit]
    local per = unit == "B/s" and "/s" or ""
    local b = maxv * base
    if b >= 1073741824 then return 1073741824 / base, " GiB" .. per end
    if b >= 1048576 then return 1048576 / base, " MiB" .. per end
    if b >= 1024 then return 1024 / base, " KiB" .. per end
    return 1 / base, " B" .. per
  elseif unit == "/s" then
    if maxv >= 1e9 then return 1e9, " G/s" end
    if maxv >= 1e6 then return 1e6, " M/s" end
    if maxv >= 1e3 then return 1e3, " k/s" end
    return 1, " /s"
  elseif unit == "x" then return 1, "×"
  elseif unit == "%" then return 1, " %"
  elseif unit and unit ~= "" then return 1, " " .. unit end
  return 1, ""
end

-- A run time in words: "45 s", "2 min 05 s".
function M.duration(s)
  if s >= 90 then return ("%d min %02d s"):format(math.floor(s / 60), math.floor(s % 60)) end
  return ("%.0f s"):format(s)
end

-- A ratio in a table cell: "2.50×".
function M.ratio(r) return ("%.2f×"):format(r) end

-- A table cell: the value in its unit, "—" when there is none.
function M.cell(v, unit)
  if v == nil then return "—" end
  return M.value(v, unit)
end

-- A summary's median with its spread, "1.2 ms (1.1 ms – 1.4 ms)"; "—"
-- when nothing was measured.
function M.spread(s, unit)
  if not s.median then return "—" end
  return ("%s (%s – %s)"):format(M.value(s.median, unit), M.value(s.p10, unit), M.value(s.p90, unit))
end

return M
