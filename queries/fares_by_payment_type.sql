-- name: Fares and tips by payment type
-- description: Per day and payment type (null when the export left it blank), over completed trips: trips, total fare and total tip, rounded to cents.
SELECT
    trip_date,
    CAST(payment_type AS DECIMAL(38, 0)) AS payment_type,
    COUNT(*) AS trips,
    CAST(ROUND(SUM(CAST(fare_amount AS DECIMAL(76, 18))), 2) AS DECIMAL(38, 2)) AS total_fare,
    CAST(ROUND(SUM(CAST(COALESCE(tip_amount, 0) AS DECIMAL(76, 18))), 2) AS DECIMAL(38, 2)) AS total_tip
FROM trips
WHERE trip_completed
GROUP BY trip_date, CAST(payment_type AS DECIMAL(38, 0))
ORDER BY trip_date, payment_type NULLS LAST
