-- procthread.lab.stats: order statistics of a list of samples.
local M = {}

local function sorted_numbers(xs)
  local s = {}
  for i = 1, #xs do
    local v = xs[i]
    if type(v) == "number" and v == v then s[#s + 1] = v end
  end
  table.sort(s)
  return s
end

-- Quantile q (0..1) of an already sorted list, linear interpolation between
-- the closest ranks (type 7, as R and NumPy do by default).
function M.quantile_sorted(s, q)
  local n = #s
  if n == 0 then return nil end
  if n == 1 then return s[1] end
  local h = (n - 1) * q + 1
  local lo = math.floor(h)
  local hi = math.min(lo + 1, n)
  return s[lo] + (h - lo) * (s[hi] - s[lo])
end

function M.quantile(xs, q) return M.quantile_sorted(sorted_numbers(xs), q) end
function M.median(xs) return M.quantile(xs, 0.5) end

function M.mean(xs)
  local s, n = 0, 0
  for i = 1, #xs do if type(xs[i]) == "number" then s = s + xs[i]; n = n + 1 end end
  if n == 0 then return nil end
  return s / n
end

-- A distribution-free 95 % confidence interval of the median of an
-- already sorted list: the order statistics at ranks n/2 -+ 0.98 sqrt(n)
-- (the binomial's normal approximation), clamped to the list; the whole
-- list for a handful of samples.
function M.median_ci_sorted(s)
  local n = #s
  if n == 0 then return nil end
  local d = 0.98 * math.sqrt(n)
  local j = math.max(1, math.floor(n / 2 - d))
  local k = math.min(n, math.ceil(n / 2 + 1 + d))
  return s[j], s[k]
end

-- Summary of samples: n, failed, median, min, max, p10, p90, mean, and
-- ci_lo, ci_hi (the median's 95 % confidence interval).
-- `failed` is copied from the argument (the count of samples that did not
-- produce a number).
function M.summary(xs, failed)
  local s = sorted_numbers(xs or {})
  local r = { n = #s, failed = failed or 0 }
  if #s > 0 then
    r.median = M.quantile_sorted(s, 0.5)
    r.min, r.max = s[1], s[#s]
    r.p10 = M.quantile_sorted(s, 0.1)
    r.p90 = M.quantile_sorted(s, 0.9)
    r.mean = M.mean(s)
    r.ci_lo, r.ci_hi = M.median_ci_sorted(s)
  end
  return r
end

-- The noise rule: compare summary a with `margin` times summary b by their
-- spreads (p10 – p90).  "above" when a's spread lies wholly above margin x
-- b's, "below" when wholly below, "within noise" when they overlap (or a
-- side has no sample: nil).  A condition is stated only from "above" and
-- "below"; "within noise" is never a win.
local function versus_by(a, b, margin, lo, hi)
  if not (a and b and a[lo] and b[lo]) then return nil end
  margin = margin or 1
  if a[lo] > margin * b[hi] then return "above" end
  if a[hi] < margin * b[lo] then return "below" end
  return "within noise"
end

function M.versus(a, b, margin) return versus_by(a, b, margin, "p10", "p90") end

-- The same rule on the medians' confidence intervals (ci_lo – ci_hi):
-- whether the medians differ by the margin, where the samples themselves
-- fall into two modes (a wait that spins or sleeps) whose p10 – p90 would
-- overlap whatever the medians.
function M.versus_median(a, b, margin) return versus_by(a, b, margin, "ci_lo", "ci_hi") end

-- Linear interpolation: the x at which the line through (x1,y1), (x2,y2)
-- reaches y.
function M.cross(x1, y1, x2, y2, y)
  if y2 == y1 then return x1 end
  return x1 + (y - y1) * (x2 - x1) / (y2 - y1)
end

return M
